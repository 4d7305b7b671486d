"""ddpm sample: uint8 NHWC .npz, grids, per-sample seeds (independent of batch size and process count)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _eval_tiny import make_checkpoint, one_thread, png_size, run_cli  # noqa: F401 (autouse fixture)
from ddpm.cli import main
from ddpm.evaluation.samples import SamplerSpec, generate
from ddpm.loading import load_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("sample") / "ckpt")


def _same(a: np.ndarray, b: np.ndarray) -> None:
    """Equal images; a 1-level rounding flip on under 1% of pixels is tolerated (batched float kernels)."""
    assert a.shape == b.shape and a.dtype == b.dtype
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


@pytest.mark.parametrize("spec", [SamplerSpec(), SamplerSpec(sampler="ddim", steps=5),
                                  SamplerSpec(sampler="ddim", steps=4, eta=1.0)])
def test_samples_do_not_depend_on_batching(ckpt, spec):
    m = load_model(ckpt)
    whole = generate(m, m.diffusion, (1, 8, 8), spec, 7, range(0, 9), batch_size=9)
    small = generate(m, m.diffusion, (1, 8, 8), spec, 7, range(0, 9), batch_size=2)
    split = np.concatenate([generate(m, m.diffusion, (1, 8, 8), spec, 7, r, 4) for r in (range(0, 5), range(5, 9))])
    _same(whole, small)
    _same(whole, split)
    other_seed = generate(m, m.diffusion, (1, 8, 8), spec, 8, range(0, 9), batch_size=9)
    assert not np.array_equal(whole, other_seed)


def test_sample_command_files(ckpt, tmp_path):
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(ckpt), "--out", str(out), "--n", "12", "--batch-size", "5",
                 "--sampler", "ddim", "--steps", "5", "--grid", "9", "--no-progress"]) == 0
    with np.load(out / "samples.npz") as z:
        images = z["images"]
    assert images.shape == (12, 8, 8, 1) and images.dtype == np.uint8
    assert images.min() >= 0 and images.max() <= 255 and images.std() > 0
    assert png_size(out / "samples.png") == (224, 224)  # 3 × 3 tiles of 8 + 1 pad, + 1, upscaled 8× to 64 px
    s = json.loads((out / "samples.json").read_text())
    assert s["n"] == 12 and s["sampler"] == "ddim" and s["steps"] == 5 and s["img_per_s"] > 0
    args = json.loads((out / "args.json").read_text())
    assert args["options"]["sample"]["spec"]["steps"] == 5 and args["world_size"] == 1
    # --limit caps the number of samples
    assert main(["sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "l"), "--n", "12", "--limit", "3",
                 "--steps", "4", "--no-progress"]) == 0
    with np.load(tmp_path / "l" / "samples.npz") as z:
        assert z["images"].shape == (3, 8, 8, 1)


def test_two_processes_equal_one(ckpt, tmp_path):
    """torchrun with 2 gloo processes and another batch size writes the same samples as one process."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["sample", "--checkpoint", str(ckpt), "--out", str(one), "--n", "7", "--batch-size", "7",
                 "--no-progress"]) == 0
    run_cli("sample", "--checkpoint", str(ckpt), "--out", str(two), "--num-samples", "7", "--batch-size", "2", nproc=2)
    with np.load(one / "samples.npz") as a, np.load(two / "samples.npz") as b:
        _same(a["images"], b["images"])
    assert json.loads((two / "samples.json").read_text())["world_size"] == 2
    assert png_size(two / "samples.png") == png_size(one / "samples.png")


@pytest.mark.parametrize("sampler", ["dpm++2m", "dpm++3m", "sde-dpm++2m"])
def test_every_registered_sampler_runs_from_the_command_line(ckpt, tmp_path, capsys, sampler):
    out = tmp_path / sampler
    assert main(["sample", "--checkpoint", str(ckpt), "--out", str(out), "--n", "3", "--sampler", sampler,
                 "--steps", "6", "--spacing", "logsnr", "--no-progress"]) == 0
    info = json.loads((out / "samples.json").read_text())
    assert (info["sampler"], info["steps"], info["spacing"]) == (sampler, 6, "logsnr")
    images = np.load(out / "samples.npz")["images"]
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.uint8
    assert sampler in capsys.readouterr().out


def test_each_sampler_takes_its_own_spacing_unless_told(ckpt, tmp_path):
    from ddpm.rng import per_item
    from ddpm.sampling import SAMPLERS, sample
    from ddpm.sampling.registry import spacing_for

    family = {"dpm++2m", "dpm++3m", "dpm++3m-taylor", "sde-dpm++2m"}  # DPM-Solver++: log-SNR (Lu et al. 2022)
    assert {n for n, info in SAMPLERS.items() if info.spacing == "logsnr"} == family
    assert all(SAMPLERS[n].spacing == "uniform" for n in SAMPLERS if n not in family)
    assert spacing_for("dpm++2m", None) == "logsnr" and spacing_for("dpm++2m", "quadratic") == "quadratic"
    m = load_model(ckpt)

    def draw(sampler, spacing):
        return sample(m, m.diffusion, (2, *m.sample_shape), per_item(0, "sample", range(2)), sampler, 6,
                      spacing=spacing)

    assert torch.equal(draw("dpm++2m", None), draw("dpm++2m", "logsnr"))
    assert not torch.equal(draw("dpm++2m", None), draw("dpm++2m", "uniform"))
    assert torch.equal(draw("ddim", None), draw("ddim", "uniform"))
    out = tmp_path / "default"  # the command records the spacing it used
    assert main(["sample", "--checkpoint", str(ckpt), "--out", str(out), "--n", "2", "--sampler", "sde-dpm++2m",
                 "--steps", "6", "--no-progress"]) == 0
    assert json.loads((out / "samples.json").read_text())["spacing"] == "logsnr"
