"""bfloat16 for evaluation: the network alone runs in bf16; sampling and the bound stay close to float32."""

from __future__ import annotations

import json

import pytest
import torch

from _eval_tiny import make_checkpoint, one_thread  # noqa: F401 (autouse fixture)
from ddpm.cli import main
from ddpm.loading import load_model
from ddpm.nets.precision import in_bfloat16
from ddpm.rng import per_item
from ddpm.sampling import sample


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = make_checkpoint(tmp_path_factory.mktemp("bf16") / "ckpt")
    loaded = load_model(path)
    with torch.no_grad():  # a random network whose output is not zero (the tiny U-Net's last conv starts at 0)
        for p in loaded.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    from ddpm.checkpoint import save_model

    return save_model(path.parent / "noisy", loaded.config.to_dict(), loaded.net.state_dict())


def test_the_network_runs_in_bfloat16_and_returns_float32(ckpt):
    model = load_model(ckpt)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 5, 10, 19])
    with torch.no_grad():
        full, half = model.net(x, t), in_bfloat16(model.net)(x, t)
    assert half.dtype == torch.float32 and half.shape == full.shape
    assert not torch.equal(half, full)  # bf16 really ran
    assert (half - full).abs().max() <= 0.05 * full.abs().max()


def test_sampling_in_bfloat16_stays_close_to_float32(ckpt):
    model = load_model(ckpt)
    runs = [sample(model, model.diffusion, (8, 1, 8, 8), per_item(0, "sample", range(8)), "ddim", steps=5, bf16=b)
            for b in (False, True)]
    assert not torch.equal(*runs)
    assert (runs[0] - runs[1]).abs().mean() < 0.05


def test_nll_and_sample_take_bf16(ckpt, tmp_path, capsys):
    bounds = {}
    for flag in ([], ["--bf16"]):
        out = tmp_path / f"nll{len(flag)}"
        assert main(["nll", "--checkpoint", str(ckpt), "--out", str(out), "--limit", "4", "--no-progress",
                     *flag]) == 0
        bounds[bool(flag)] = json.loads((out / "nll.json").read_text())["nll_bits_per_dim"]
        assert json.loads((out / "args.json").read_text())["options"]["common"]["bf16"] is bool(flag)
    assert bounds[True] != bounds[False] and abs(bounds[True] - bounds[False]) < 0.02 * bounds[False]
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(ckpt), "--out", str(out), "--n", "2", "--sampler", "ddim",
                 "--steps", "4", "--bf16", "--no-progress"]) == 0
    assert json.loads((out / "args.json").read_text())["options"]["common"]["bf16"] is True
