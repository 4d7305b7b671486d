"""``ddpm convert`` both ways, and sampling from an imported diffusers pipeline through our sampler."""

import json
import struct
from pathlib import Path

import pytest
import torch

from ddpm.cli import main
from ddpm.config import DiffusionConfig, UNetConfig
from ddpm.interop.diffusers import save_diffusers
from ddpm.loading import load_model
from ddpm.nets.unet import UNet

diffusers = pytest.importorskip("diffusers")

# a small UNet2DModel in the official models' layout: positional embedding, freq_shift 1, ε 1e-6, attention
SMALL = dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
             down_block_types=("AttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "AttnUpBlock2D"),
             norm_num_groups=8, norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
             attention_head_dim=None, time_embedding_type="positional")


@pytest.fixture
def pipeline_dir(tmp_path):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**SMALL)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.05)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_small")
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe", unet, sched


def test_import_then_our_step_equals_diffusers_step(pipeline_dir, tmp_path):
    directory, unet, sched = pipeline_dir
    assert main(["convert", "--from-diffusers", str(directory), "--out", str(tmp_path / "ckpt")]) == 0
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.config.diffusion.var_type == "fixed_beta_tilde"
    x_t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert sched.config.clip_sample  # diffusers' default, like our clip_denoised=True
    for step in (999, 500, 3, 0):  # diffusers' 0-indexed step = paper t − 1; step 0 adds no noise
        t = torch.full((2,), step + 1)
        # DDPMScheduler.step draws its noise as torch.randn(shape, generator) on the CPU: draw the same
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(step))
        with torch.no_grad():
            ours, _ = loaded.diffusion.p_sample(loaded, x_t, t, noise, clip_denoised=True)
            eps = unet(x_t, step).sample
        theirs = sched.step(eps, step, x_t, generator=torch.Generator().manual_seed(step)).prev_sample
        assert torch.allclose(ours, theirs, atol=1e-4), (step, (ours - theirs).abs().max())


def test_export_round_trips_and_diffusers_loads_it(pipeline_dir, tmp_path):
    directory, unet, _ = pipeline_dir
    main(["convert", "--from-diffusers", str(directory), "--out", str(tmp_path / "ckpt")])
    assert main(["convert", "--to-diffusers", str(tmp_path / "ckpt"), "--out", str(tmp_path / "back")]) == 0
    again = diffusers.UNet2DModel.from_pretrained(tmp_path / "back" / "unet")
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(again(x, 10).sample, unet(x, 10).sample, atol=1e-5)
    sched = json.loads((tmp_path / "back" / "scheduler" / "scheduler_config.json").read_text())
    assert sched["variance_type"] == "fixed_small" and sched["num_train_timesteps"] == 1000


def test_convert_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["convert", "--from-diffusers", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "no diffusers directory" in capsys.readouterr().err


# --- hostile pipelines: one line naming the file or field, exit 2, nothing written -------------------------------

TINY = UNetConfig(image_size=8, in_channels=1, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                  attn_resolutions=(4,), dropout=0.0, num_groups=8)
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture
def tiny_pipe(tmp_path) -> Path:
    torch.manual_seed(0)
    return save_diffusers(tmp_path / "tiny", TINY, DiffusionConfig(T=20, beta_end=0.2), UNet(TINY).state_dict())


def _edit_json(path: Path, **fields: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def _retype(pipe: Path, dtype: torch.dtype) -> None:
    from safetensors.torch import load_file, save_file
    save_file({k: v.to(dtype) for k, v in load_file(pipe / WEIGHTS).items()}, pipe / WEIGHTS)


def _huge_dim(pipe: Path) -> None:
    """conv_in.bias of shape [0, 2**63 + 5]: no bytes, a shape torch cannot make."""
    from safetensors.torch import load_file, save_file
    save_file({k: v for k, v in load_file(pipe / WEIGHTS).items() if k != "conv_in.bias"}, pipe / WEIGHTS)
    raw = (pipe / WEIGHTS).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    header["conv_in.bias"] = {"dtype": "F32", "shape": [0, 2**63 + 5], "data_offsets": [len(data), len(data)]}
    text = json.dumps(header).encode()
    (pipe / WEIGHTS).write_bytes(struct.pack("<Q", len(text)) + text + data)


UNET, SCHED = "unet/config.json", "scheduler/scheduler_config.json"
HOSTILE = {
    "norm_eps_null": (lambda p: _edit_json(p / UNET, norm_eps=None), "unet config norm_eps=None; expected a number"),
    "norm_eps_bigint": (lambda p: _edit_json(p / UNET, norm_eps=10**400), "unet config norm_eps=an integer of"),
    "dropout_bigint": (lambda p: _edit_json(p / UNET, dropout=10**400), "unet config dropout=an integer of"),
    "head_dim_list": (lambda p: _edit_json(p / UNET, attention_head_dim=[32]), "unet config attention_head_dim=[32]"),
    "down_unhashable": (lambda p: _edit_json(p / UNET, down_block_types=["DownBlock2D", ["x"]]),
                        "unet config down_block_types contains [['x']]"),
    "unknown_fields_100k": (lambda p: _edit_json(p / UNET, **{f"zz{i}": 1 for i in range(100_000)}),
                            "does not know (100000): zz0, zz1"),
    "beta_bigint": (lambda p: _edit_json(p / SCHED, beta_start=10**400), "scheduler config beta_start=an integer"),
    "trained_betas_bigint": (lambda p: _edit_json(p / SCHED, trained_betas=[10**400] * 20),
                             "scheduler config trained_betas=an integer"),
    "i64_weights": (lambda p: _retype(p, torch.int64), "diffusion_pytorch_model.safetensors holds non-float tensors"),
    "bool_weights": (lambda p: _retype(p, torch.bool), "(dtype BOOL for conv_in.bias)"),
    "f8_weights": (lambda p: _retype(p, torch.float8_e4m3fn), "(dtype F8_E4M3 for conv_in.bias)"),
    "dim_2e63": (_huge_dim, "conv_in.bias: (0, 9223372036854775813) != expected (16,)"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_pipeline_is_one_line_and_writes_nothing(tiny_pipe, tmp_path, capsys, case):
    spoil, fragment = HOSTILE[case]
    spoil(tiny_pipe)
    capsys.readouterr()
    out = tmp_path / "out"
    assert main(["convert", "--from-diffusers", str(tiny_pipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 600 and "internal error" not in err, err
    assert fragment in err
    assert not out.exists()


def test_non_float_weights_do_not_replace_a_good_checkpoint(tiny_pipe, tmp_path, capsys):
    """An I64 import exited 0 and, with --overwrite, replaced a good checkpoint by one that does not load."""
    ckpt = tmp_path / "ckpt"
    assert main(["convert", "--from-diffusers", str(tiny_pipe), "--out", str(ckpt)]) == 0
    before = {p.relative_to(ckpt): p.read_bytes() for p in sorted(ckpt.rglob("*")) if p.is_file()}
    _retype(tiny_pipe, torch.int64)
    capsys.readouterr()
    assert main(["convert", "--from-diffusers", str(tiny_pipe), "--out", str(ckpt), "--overwrite"]) == 2
    assert "holds non-float tensors" in capsys.readouterr().err
    assert {p.relative_to(ckpt): p.read_bytes() for p in sorted(ckpt.rglob("*")) if p.is_file()} == before
    assert load_model(ckpt).config.model == TINY
