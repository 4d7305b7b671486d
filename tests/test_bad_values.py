"""Every value checked before anything is written, the option named (issue #13, item 4).

Each row is a value an attacker or a careless user would try: out of range, of the wrong kind, NaN or ±inf, or
an option given twice. The command must exit with code 2 and one line naming the option, and write nothing:
no run directory, no --out folder or file. The same options built through the Python API raise the same
refusal as a ConfigError (a ValueError).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from _eval_tiny import make_checkpoint, one_thread  # noqa: F401  (autouse fixture)
from ddpm.cli import main
from ddpm.compression import CodecOptions, CompressionError
from ddpm.compression.files import write_images
from ddpm.config import (
    MAX_SEED,
    ConfigError,
    DiffusionConfig,
    RunConfig,
    TrainConfig,
    UNetConfig,
    from_dict,
    override,
    preset,
)
from ddpm.evaluation.common import CommonOptions, DataChoice
from ddpm.evaluation.interpolation import InterpolateOptions
from ddpm.evaluation.nll import NLLOptions
from ddpm.evaluation.progressive import ProgressiveOptions
from ddpm.evaluation.quality import FidOptions
from ddpm.evaluation.rate_distortion import RateDistortionOptions
from ddpm.evaluation.samples import SampleOptions, SamplerSpec
from ddpm.processes import check_device, device_for
from ddpm.quickstart import QuickstartOptions
from test_reliability import TINY

T = 20  # the tiny evaluation checkpoint's chain


def tiny_train_args(**replace: str) -> list[str]:
    """TINY with some of its options replaced (so that a bad value is not also a second spelling)."""
    pairs = dict(zip(TINY[::2], TINY[1::2]))
    pairs.update({f"--{k}": v for k, v in replace.items()})
    return [x for kv in pairs.items() for x in kv]


def refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``ddpm ARGV``: it must exit with code 2 and print exactly one line; returns that line."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse refuses a value of the wrong kind (a type= function) by exiting
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


# --- ddpm train: every config field ----------------------------------------------------------------

TRAIN_BAD = [
    # the examples
    (["--grad_clip", "-1"], "train.grad_clip must be > 0"),  # trained with flipped gradients before
    (["--grad_clip", "0"], "train.grad_clip must be > 0"),
    (["--dropout", "1.5"], "model.dropout must be in [0, 1)"),
    (["--total_steps", "0"], "train.total_steps must be >= 1"),
    (["--checkpoint_every", "0"], "train.checkpoint_every must be >= 1"),
    (["--log_every", "0"], "train.log_every must be >= 1"),
    (["--num_groups", "0"], "model.num_groups must be >= 1"),  # a ZeroDivisionError before
    (["--keep_checkpoints", "0"], "train.keep_checkpoints must be >= 1"),  # refused at the first checkpoint before
    (["--lr", "nan"], "train.lr must be a finite number"),
    (["--lr", "NaN"], "train.lr must be a finite number, got nan"),  # JSON's NaN
    (["--lr", "1e999"], "train.lr must be a finite number, got inf"),
    (["--lr", "abc"], "train.lr must be a finite number, got 'abc'"),  # a str went through to the optimizer
    (["--lr", "0"], "train.lr must be > 0"),
    (["--device", "banana"], "--device 'banana' is not a device: expected auto, cpu, cuda, cuda:N or mps"),
    (["--device", "cuda:x"], "--device 'cuda:x' is not a device"),
    # the rest of TrainConfig
    (["--warmup_steps", "-1"], "train.warmup_steps must be >= 0"),
    (["--ema_decay", "1"], "train.ema_decay must be in [0, 1)"),
    (["--ema_decay", "nan"], "train.ema_decay must be a finite number"),
    (["--batch_size", "0"], "train.batch_size must be >= 1"),
    (["--num_workers", "-1"], "train.num_workers must be >= 0"),
    (["--sample_every", "-1"], "train.sample_every must be >= 0"),
    (["--seed", "-1"], f"train.seed must be in 0..{MAX_SEED}"),
    (["--seed", str(MAX_SEED + 1)], f"train.seed must be in 0..{MAX_SEED}"),
    (["--total_steps", "1.5"], "train.total_steps must be an integer, got 1.5"),
    (["--total_steps", "abc"], "train.total_steps must be an integer, got 'abc'"),
    (["--bf16", "maybe"], "train.bf16 must be true or false"),
    (["--nonfinite_policy", "ignore"], "train.nonfinite_policy='ignore' is not one of"),
    # DiffusionConfig
    (["--T", "0"], "diffusion.T must be in 1.."),  # the upper bound is MAX_T
    (["--T", "abc"], "diffusion.T must be an integer"),
    (["--beta_start", "0"], "diffusion.beta_start=0.0 is not a variance: β_t must lie in (0, 1)"),
    (["--beta_end", "nan"], "diffusion.beta_end must be a finite number"),
    (["--hybrid_lambda", "-1"], "diffusion.hybrid_lambda must be >= 0"),
    (["--hybrid_lambda", "inf"], "diffusion.hybrid_lambda must be a finite number"),
    (["--levels", "1"], "diffusion.levels must be >= 2"),
    # DataConfig
    (["--held_out_fraction", "-0.1"], "data.held_out_fraction must be in [0, 1)"),
    (["--held_out_fraction", "1"], "data.held_out_fraction must be in [0, 1)"),
    (["--split_seed", "-1"], f"data.split_seed must be in 0..{MAX_SEED}"),
    (["--channels", "0"], "model.in_channels must be >= 1"),  # --channels sets model and data
    # UNetConfig
    (["--image_size", "0"], "model.image_size must be >= 1"),
    (["--base_channels", "0"], "model.base_channels must be >= 1"),
    (["--num_res_blocks", "0"], "model.num_res_blocks must be >= 1"),
    (["--channel_mults", "0"], "model.channel_mults must be >= 1"),
    (["--attn_resolutions", "3"], "model.attn_resolutions [3] are not resolutions of this U-Net"),
    (["--dropout", "-0.1"], "model.dropout must be in [0, 1)"),
]
_TINY_KEYS = {k.lstrip("-") for k in TINY[::2]}


@pytest.mark.parametrize("bad,needle", TRAIN_BAD, ids=[" ".join(b) for b, _ in TRAIN_BAD])
def test_train_refuses_each_bad_value_naming_it_and_writes_nothing(tmp_path, capsys, bad, needle):
    key = bad[0].lstrip("-")
    argv = tiny_train_args(**{key: bad[1]}) if key in _TINY_KEYS else [*TINY, *bad]
    run = tmp_path / "run"
    tick = time.perf_counter()
    err = refused(capsys, ["train", "--preset", "digits", *argv, "--out", str(run)])
    assert needle in err
    assert key in err  # the option as the user spelled it is part of its dotted name (lr -> train.lr)
    assert time.perf_counter() - tick < 10  # refused before any data is read or model built
    assert not run.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad,needle", [
    (["--time_embed_dim", "2"], "model.time_embed_dim must be >= 4"),  # the embedding divides by dim // 2 − 1
    (["--depth", "0"], "model.depth must be >= 1"),  # no layer would see the time step
    (["--hidden", "0"], "model.hidden must be >= 1"),
])
def test_train_refuses_bad_mlp_values(tmp_path, capsys, bad, needle):
    err = refused(capsys, ["train", "--preset", "toy2d", *bad, "--out", str(tmp_path / "run")])
    assert needle in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("twice,needle", [
    (["--lr", "1e-3", "--train.lr", "1e-3"], "lr and train.lr both set train.lr: give it once"),
    (["--train.lr", "1e-3", "--lr=2e-3"], "train.lr and lr both set train.lr: give it once"),
    (["--lr", "1e-3", "--lr", "2e-3"], "option --lr is given twice (as --lr and --lr): give it once"),
    (["--grad-clip", "1", "--grad_clip", "1"], "option --grad_clip is given twice (as --grad-clip and --grad_clip)"),
    (["--image_size", "8", "--model.image_size", "8"], "image_size and model.image_size both set model.image_size"),
    (["--lr="], "option --lr needs a value after '='"),
])
def test_an_option_given_twice_is_an_error_not_the_last_wins(tmp_path, capsys, twice, needle):
    err = refused(capsys, ["train", "--preset", "digits", *TINY, *twice, "--out", str(tmp_path / "run")])
    assert needle in err
    assert not (tmp_path / "run").exists()


def test_a_hostile_value_is_refused_fast_in_one_short_line(tmp_path, capsys):
    # 100 000 digits: more than Python converts to an int, and no message should repeat them all
    tick = time.perf_counter()
    err = refused(capsys, ["train", "--preset", "digits", "--total_steps", "9" * 100_000, "--out", str(tmp_path / "r")])
    assert time.perf_counter() - tick < 5
    assert "train.total_steps must be an integer" in err and len(err) < 300
    err = refused(capsys, ["train", "--preset", "digits", "--lr", "1" + "0" * 400, "--out", str(tmp_path / "r")])
    assert "train.lr must be a finite number" in err and len(err) < 300
    assert not (tmp_path / "r").exists()


# --- the Python API: the same refusals ---------------------------------------------------------------

@pytest.mark.parametrize("changes,needle", [
    (dict(grad_clip=-1), "train.grad_clip must be > 0"),
    (dict(lr=math.nan), "train.lr must be a finite number"),
    (dict(lr="abc"), "train.lr must be a finite number, got 'abc'"),
    (dict(seed=-1), "train.seed"),
    (dict(batch_size=True), "train.batch_size must be an integer, got True"),
    (dict(keep_checkpoints=0), "train.keep_checkpoints must be >= 1"),
    (dict(dropout=1.0), "model.dropout must be in [0, 1)"),
    ({"lr": 1e-3, "train.lr": 1e-3}, "lr and train.lr both set train.lr"),
])
def test_override_refuses_naming_the_field(changes, needle):
    with pytest.raises(ConfigError) as e:
        override(preset("digits"), **changes)
    assert needle in str(e.value)


def test_direct_construction_and_json_are_checked_as_well():
    with pytest.raises(ConfigError, match="train.lr must be a finite number, got 'abc'"):
        RunConfig(train=TrainConfig(lr="abc"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="diffusion.hybrid_lambda must be a finite number"):
        RunConfig(diffusion=DiffusionConfig(hybrid_lambda=math.inf))
    with pytest.raises(ConfigError, match=r"model.dropout must be in \[0, 1\)"):
        RunConfig(model=UNetConfig(dropout=2.0))
    d = preset("digits").to_dict()
    d["train"]["grad_clip"] = "1.0"  # a str in a config.json
    with pytest.raises(ConfigError, match="train.grad_clip must be a finite number, got '1.0'"):
        RunConfig.from_dict(d)
    with pytest.raises(ConfigError, match="config must be an object of options, got list"):
        from_dict(RunConfig, [1, 2])  # type: ignore[arg-type]
    for name in ("digits", "toy2d", "cifar10", "celebahq256", "lsun_cat256"):  # every preset still passes
        RunConfig.from_dict(preset(name).to_dict())


@pytest.mark.parametrize("build,needle", [
    (lambda: CommonOptions(checkpoint="c", out="o", seed=-1), "--seed must be in 0.."),
    (lambda: CommonOptions(checkpoint="c", out="o", batch_size=0), "--batch-size must be >= 1"),
    (lambda: CommonOptions(checkpoint="c", out="o", limit=-1), "--limit must be >= 1"),
    (lambda: CommonOptions(checkpoint="c", out="o", device="banana"), "--device 'banana' is not a device"),
    (lambda: DataChoice(split="val"), "--split must be train or test, got 'val'"),  # type: ignore[arg-type]
    (lambda: NLLOptions(t_batch=0), "--t-batch must be >= 1"),
    (lambda: NLLOptions(steps=0), "--steps must be >= 1"),
    (lambda: NLLOptions(decoder="gauss"), "--decoder must be auto, discretized or continuous"),  # type: ignore
    (lambda: RateDistortionOptions(num_t=1), "--num-t must be >= 2"),
    (lambda: SamplerSpec(eta=math.nan), "--eta must be a finite number >= 0, got nan"),
    (lambda: SamplerSpec(eta=-1.0), "--eta must be >= 0"),
    (lambda: SamplerSpec(steps=0), "--steps must be >= 1"),
    (lambda: SamplerSpec(sampler="euler"), "--sampler must be one of ancestral, ddim, dpm++2m"),
    (lambda: SamplerSpec(sampler="dpm++2m", eta=0.5), "--eta applies to ddim only"),
    (lambda: SamplerSpec(spacing="cubic"), "--spacing must be one of uniform, quadratic, logsnr"),  # type: ignore
    (lambda: SampleOptions(n=0), "--n must be >= 1"),
    (lambda: SampleOptions(grid=0), "--grid must be >= 1"),
    (lambda: ProgressiveOptions(at=()), "--at needs at least one value"),
    (lambda: ProgressiveOptions(share_t=(0,)), "--share-t must be >= 1"),
    (lambda: ProgressiveOptions(images=(-1,)), "--images must be >= 0"),
    (lambda: ProgressiveOptions(rows=0), "--rows must be >= 1"),
    (lambda: InterpolateOptions(indices=(1,)), "--indices needs an even number"),
    (lambda: InterpolateOptions(t=(0,)), "--t must be >= 1"),
    (lambda: InterpolateOptions(lambdas=1), "--lambdas must be >= 2"),
    (lambda: FidOptions("s.npz", limit=-1), "--limit must be >= 1"),  # images[:-1] dropped a sample before
    (lambda: FidOptions("s.npz", is_splits=0), "--is-splits must be >= 1"),
    (lambda: FidOptions("s.npz", device="gpu"), "--device 'gpu' is not a device: expected auto, cpu, cuda"),
    (lambda: QuickstartOptions(n_samples=0), "--samples (n_samples) must be >= 1"),
    (lambda: QuickstartOptions(sampler_steps=1001), "--sampler-steps must be in 1..1000"),
    (lambda: QuickstartOptions(sampler="analytic-ddpm"), "the Analytic-DPM samplers need a Γ estimate"),
    (lambda: QuickstartOptions(sampler="euler"), "--sampler must be one of ancestral, ddim"),
    (lambda: QuickstartOptions(compare_steps=(10, 0)), "--compare-steps must be in 1..1000"),
    (lambda: QuickstartOptions(spacing="cubic"), "--spacing must be one of uniform"),
    (lambda: QuickstartOptions(t_per_batch=0), "t_per_batch must be >= 1"),
])
def test_options_dataclasses_refuse_naming_the_option(build, needle):
    with pytest.raises(ConfigError) as e:
        build()
    assert needle in str(e.value)


@pytest.mark.parametrize("changes,needle", [
    (dict(steps=0), "--steps must be >= 1"),  # was `0 or T`: silently all T steps
    (dict(batch_size=0), "--batch-size (batch_size) must be in 1..4096"),
    (dict(grid_log2=9), "--grid-log2 (grid_log2) must be in -8..4"),
    (dict(window=256), "--window must be in 1..255"),
    (dict(window=True), "--window must be an integer"),
])
def test_codec_options_refuse_at_construction(changes, needle):
    with pytest.raises(CompressionError) as e:
        CodecOptions(**changes)
    assert needle in str(e.value)


def test_device_strings():
    for good in ("cpu", "cuda", "cuda:0", "cuda:12", "mps", "auto"):
        assert check_device(good) == good
    for bad in ("banana", "CPU", "cpu:0", "cuda:", "cuda:-1", "cuda:01", " cpu", "meta", "", None):
        with pytest.raises(ConfigError, match="--device .* is not a device"):
            check_device(bad)  # type: ignore[arg-type]
    assert str(device_for("cpu")) == "cpu"


# --- evaluation commands, compress/decompress, quickstart ---------------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model", T=T)


# (command, bad arguments, needle); every command gets a valid --checkpoint and a fresh --out
EVAL_BAD = [
    # options every evaluation command shares
    ("sample", ["--seed", "-1"], f"--seed must be in 0..{MAX_SEED}"),
    ("sample", ["--seed", "abc"], "argument --seed: invalid int value: 'abc'"),
    ("sample", ["--batch-size", "0"], "--batch-size must be >= 1"),
    ("sample", ["--limit", "0"], "--limit must be >= 1"),
    ("nll", ["--limit", "-1"], "--limit must be >= 1"),
    ("sample", ["--device", "banana"], "--device 'banana' is not a device"),
    ("nll", ["--device", "cuda:x"], "--device 'cuda:x' is not a device"),
    # sample
    ("sample", ["--n", "0"], "--n must be >= 1"),
    ("sample", ["--steps", "0"], "--steps must be >= 1"),
    ("sample", ["--steps", str(T + 1)], f"--steps must be in 1..{T}"),  # needs the model: after loading it
    ("sample", ["--eta", "nan"], "argument --eta: expected a finite number, got 'nan'"),  # failed after sampling
    ("sample", ["--eta", "inf"], "argument --eta: expected a finite number"),
    ("sample", ["--eta", "-0.5"], "--eta must be >= 0"),
    ("sample", ["--grid", "0"], "--grid must be >= 1"),
    # nll
    ("nll", ["--t-batch", "0"], "--t-batch must be >= 1"),
    ("nll", ["--steps", "0"], "--steps must be >= 1"),
    ("nll", ["--steps", str(T + 1)], f"--steps must be in 1..{T}"),
    # rate-distortion (a bad --num-t was refused only after the whole evaluation)
    ("rate-distortion", ["--num-t", "1"], "--num-t must be >= 2"),
    ("rate-distortion", ["--t-batch", "0"], "--t-batch must be >= 1"),
    # progressive
    ("progressive", ["--rows", "0"], "--rows must be >= 1"),
    ("progressive", ["--columns", "0"], "--columns must be >= 1"),
    ("progressive", ["--share-samples", "0"], "--share-samples must be >= 1"),
    ("progressive", ["--share-images", "0"], "--share-images must be >= 1"),
    ("progressive", ["--at", "0"], "--at must be >= 1"),
    ("progressive", ["--at", f"{T + 1},1"], f"--at must be in 1..{T}"),
    ("progressive", ["--at", ","], "argument --at: expected at least one integer"),  # was: the default
    ("progressive", ["--at", "1,x"], "argument --at: expected comma-separated integers"),
    ("progressive", ["--share-t", str(T + 1)], f"--share-t must be in 1..{T}"),
    ("progressive", ["--images", "-1"], "--images must be >= 0"),
    ("progressive", ["--images", "0,100000"], "--images [100000] are outside the test split"),
    # interpolate
    ("interpolate", ["--t", "0"], "--t must be >= 1"),
    ("interpolate", ["--t", str(T + 1)], f"--t must be in 1..{T}"),
    ("interpolate", ["--lambdas", "1"], "--lambdas must be >= 2"),
    ("interpolate", ["--pairs", "0"], "--pairs must be >= 1"),
    ("interpolate", ["--indices", "0"], "--indices needs an even number of image indices"),
    ("interpolate", ["--indices", "0,-1"], "--indices must be >= 0"),
    ("interpolate", ["--indices", "0,100000"], "--indices [100000] are outside the split"),
]


@pytest.mark.parametrize("command,bad,needle", EVAL_BAD, ids=[f"{c} {' '.join(b)}" for c, b, _ in EVAL_BAD])
def test_evaluation_commands_refuse_naming_the_option_and_write_nothing(tmp_path, capsys, ckpt, command, bad,
                                                                        needle):
    out = tmp_path / "out"
    err = refused(capsys, [command, "--checkpoint", str(ckpt), "--out", str(out), "--no-progress", *bad])
    assert needle in err
    assert bad[0] in err
    assert not out.exists()


@pytest.mark.parametrize("bad,needle", [
    (["--eta", "nan"], "--eta"), (["--device", "banana"], "--device"), (["--seed", "-1"], "--seed"),
    (["--n", "0"], "--n"),
])
def test_values_are_checked_before_the_model_is_loaded(tmp_path, capsys, bad, needle):
    # a checkpoint that does not exist: the refusal names the option, so it came first
    err = refused(capsys, ["sample", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), *bad])
    assert needle in err and "missing" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("bad,needle", [
    (["--limit", "-1"], "--limit must be >= 1"),  # images[:-1] silently dropped the last sample
    (["--limit", "0"], "--limit must be >= 1"),
    (["--is-splits", "0"], "--is-splits must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--seed", "-1"], "--seed must be in 0.."),
    (["--device", "banana"], "--device 'banana' is not a device"),
])
def test_fid_refuses_before_reading_the_samples(tmp_path, capsys, bad, needle):
    out = tmp_path / "fid"
    err = refused(capsys, ["fid", "--samples", str(tmp_path / "missing.npz"), "--out", str(out), *bad])
    assert needle in err and "missing.npz" not in err
    assert not out.exists()


@pytest.mark.parametrize("bad,needle", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--steps", str(T + 1)], f"--steps must be in 1..{T}"),  # needs the model
    (["--batch-size", "0"], "--batch-size (batch_size) must be in 1..4096"),
    (["--batch-size", "5000"], "--batch-size (batch_size) must be in 1..4096"),
    (["--grid-log2", "9"], "--grid-log2 (grid_log2) must be in -8..4"),
    (["--window", "0"], "--window must be in 1..255"),
])
def test_compress_refuses_bad_options_and_writes_no_file(tmp_path, capsys, ckpt, bad, needle):
    inputs = write_images(tmp_path / "in", np.zeros((2, 1, 8, 8), np.uint8), 17)
    out = tmp_path / "file.ddpm"
    err = refused(capsys, ["compress", *map(str, inputs), "--checkpoint", str(ckpt), "--out", str(out),
                           "--no-progress", *bad])
    assert needle in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_decompress_refuses_negative_previews(tmp_path, capsys, ckpt):
    err = refused(capsys, ["decompress", str(tmp_path / "x.ddpm"), "--checkpoint", str(ckpt), "--out",
                           str(tmp_path / "o"), "--previews", "-1"])
    assert "argument --previews: must be >= 0, got -1" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("bad,needle", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--samples", "0"], "--samples (n_samples) must be >= 1"),
    (["--sampler-steps", "0"], "--sampler-steps must be in 1..1000"),
    (["--sampler-steps", "1001"], "--sampler-steps must be in 1..1000"),
    (["--compare-steps", "10,5000"], "--compare-steps must be in 1..1000"),
    (["--nll-images", "0"], "--nll-images must be >= 1"),
    (["--seed", "-1"], "--seed must be in 0.."),
])
def test_quickstart_refuses_before_training(tmp_path, capsys, bad, needle):
    out = tmp_path / "qs"
    tick = time.perf_counter()
    err = refused(capsys, ["quickstart", "--out", str(out), "--no-progress", *bad])
    assert needle in err
    assert time.perf_counter() - tick < 10
    assert not out.exists()
