"""``ddpm convert`` both ways, and sampling from an imported diffusers pipeline through our sampler."""

import json

import pytest
import torch

from ddpm.cli import main
from ddpm.loading import load_model

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
