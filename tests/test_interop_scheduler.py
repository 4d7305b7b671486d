"""diffusers interop against diffusers itself: the schedulers' sampling steps and chains, the variance and clipping
fields whose meaning differs between the two, and the official 256×256 configuration at full size."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ddpm.cli import main
from ddpm.config import DiffusionConfig, UNetConfig, network_out_channels, preset
from ddpm.diffusion import GaussianDiffusion
from ddpm.interop.diffusers import (
    DiffusersFormatError,
    diffusion_config_from_scheduler,
    load_diffusers,
    save_diffusers,
    state_dict_from_diffusers,
    state_dict_to_diffusers,
    unet_config_from_diffusers,
)
from ddpm.loading import load_model
from ddpm.nets.unet import UNet, count_parameters
from ddpm.rng import GlobalNoise
from ddpm.sampling.ancestral import ancestral_steps

diffusers = pytest.importorskip("diffusers")

# a small UNet2DModel in the official layout (positional embedding, freq_shift 1, ε 1e-6, TF 'SAME' downsampling)
TINY = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8, norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
            attention_head_dim=None, time_embedding_type="positional")


def _random_unet(config: dict, seed: int, std: float = 0.05):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(**config)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, std)
    return unet.eval()


def _pipeline(tmp_path: Path, scheduler: dict, out_channels: int = 1, seed: int = 0) -> tuple[Path, object, object]:
    unet = _random_unet({**TINY, "out_channels": out_channels}, seed)
    sched = diffusers.DDPMScheduler(**scheduler)
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe", unet, sched


# --- one step of p_θ: our p_sample and DDPMScheduler.step on the same weights, x_t and noise ----------------------

@pytest.mark.parametrize("variance_type, prediction_type", [
    ("fixed_small", "epsilon"), ("fixed_large", "epsilon"), ("fixed_small_log", "epsilon"),
    ("fixed_small", "sample"), ("learned_range", "epsilon"),
])
def test_one_step_equals_diffusers_step_for_each_variance_and_prediction(tmp_path, variance_type, prediction_type):
    """The posterior mean and the variance of x_{t−1}: σ² = β̃ (fixed_small), β (fixed_large), learned_range."""
    learned = variance_type == "learned_range"
    directory, unet, sched = _pipeline(tmp_path, dict(variance_type=variance_type, prediction_type=prediction_type),
                                       out_channels=2 if learned else 1)
    assert main(["convert", "--from-diffusers", str(directory), "--out", str(tmp_path / "ckpt")]) == 0
    loaded = load_model(tmp_path / "ckpt")
    want = {"fixed_small": "fixed_beta_tilde", "fixed_small_log": "fixed_beta_tilde", "fixed_large": "fixed_beta",
            "learned_range": "learned_range"}[variance_type]
    assert loaded.config.diffusion.var_type == want
    assert loaded.config.diffusion.mean_type == {"epsilon": "eps", "sample": "x0"}[prediction_type]
    x_t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for step in (999, 700, 100, 10, 1):  # diffusers' 0-indexed step = paper t − 1
        t = torch.full((2,), step + 1)
        draws = []
        for seed in (step, step + 1000):  # two noise draws: agreeing on both is agreeing on the mean and on σ
            noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(seed))  # what step() draws
            with torch.no_grad():
                ours, p = loaded.diffusion.p_sample(loaded, x_t, t, noise, clip_denoised=True)
                out = unet(x_t, step).sample
            theirs = sched.step(out, step, x_t, generator=torch.Generator().manual_seed(seed))
            assert torch.isfinite(theirs.prev_sample).all()
            torch.testing.assert_close(p.pred_x0, theirs.pred_original_sample, rtol=0, atol=2e-4)
            # diffusers' float32 β_t = 1 − ᾱ_t/ᾱ_{t−1} is off by ~1e-3 relative at β ~ 1e-4: a few 1e-5 here
            torch.testing.assert_close(ours, theirs.prev_sample, rtol=0, atol=1e-4)
            draws.append((noise, theirs.prev_sample))
        (z_a, x_a), (z_b, x_b) = draws
        apart = (z_a - z_b).abs() > 0.5
        sigma_theirs = ((x_a - x_b) / (z_a - z_b))[apart]  # x_{t−1} = μ + σ z in diffusers too
        sigma_ours = torch.exp(0.5 * p.log_var).expand_as(x_t)[apart]
        torch.testing.assert_close(sigma_theirs, sigma_ours, rtol=5e-3, atol=2e-4)
        if not learned:  # σ² = β̃_t or β_t exactly, from our float64 tables
            s = loaded.diffusion.schedule
            table = s.beta_tilde if want == "fixed_beta_tilde" else s.betas
            torch.testing.assert_close(sigma_ours, torch.full_like(sigma_ours, table[step].sqrt().item()))


# --- the whole chain: DDPMPipeline and our Algorithm 2 on the imported weights ------------------------------------

@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_ddpm_pipeline_and_our_sampler_give_the_same_samples(tmp_path, variance_type):
    """1000 steps with the same generator: DDPMPipeline draws x_T then one z per step for t > 0, as GlobalNoise does."""
    directory, unet, sched = _pipeline(tmp_path, dict(variance_type=variance_type), seed=3)
    main(["convert", "--from-diffusers", str(directory), "--out", str(tmp_path / "ckpt")])
    loaded = load_model(tmp_path / "ckpt")
    pipe = diffusers.DDPMPipeline.from_pretrained(directory)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=3, generator=torch.Generator().manual_seed(7), num_inference_steps=1000,
                  output_type="np").images  # (B, H, W, C) in [0, 1]
    gen = torch.Generator().manual_seed(7)
    x_T = torch.randn(3, 1, 8, 8, generator=gen)
    for step in ancestral_steps(loaded, loaded.diffusion, x_T, GlobalNoise(gen), clip_denoised=True):
        x = step.x
    ours = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    diff = abs(ours - theirs)
    assert theirs.std() > 0.05  # not two constant images
    assert diff.max() < 2e-3 and diff.mean() < 2e-4, (diff.max(), diff.mean())


# --- variance_type 'learned': σ² in diffusers, log σ² in ddpm -----------------------------------------------------

def test_diffusers_learned_variance_is_sigma_squared_not_its_log():
    """The reason the name is refused both ways: DDPMScheduler takes the square root of the Σ channels."""
    sched = diffusers.DDPMScheduler(variance_type="learned")
    x_t = torch.zeros(1, 1, 2, 2)
    sigma2 = torch.full((1, 1, 2, 2), 0.01)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(0))
    out = sched.step(torch.cat([torch.zeros_like(x_t), sigma2], 1), 500, x_t, generator=gen)
    mean = sched.step(torch.cat([torch.zeros_like(x_t), sigma2], 1), 0, x_t).prev_sample  # step 0 adds no noise
    torch.testing.assert_close(out.prev_sample - mean, 0.1 * noise)  # σ = √0.01: the channel is σ² itself
    log_sigma2 = torch.log(sigma2)  # what a ddpm 'learned' network outputs for the same σ²
    out = sched.step(torch.cat([torch.zeros_like(x_t), log_sigma2], 1), 500, x_t, generator=gen)
    assert torch.isnan(out.prev_sample).all()


def test_a_learned_variance_model_is_not_exported_as_diffusers_learned(tmp_path):
    cfg = UNetConfig(image_size=8, in_channels=1, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                     attn_resolutions=(4,), dropout=0.0, num_groups=8)
    diffusion = DiffusionConfig(var_type="learned", loss_type="vlb")
    state = UNet(cfg, network_out_channels(cfg, diffusion)).state_dict()
    with pytest.raises(DiffusersFormatError, match=r"var_type='learned' has no diffusers equivalent: .* as σ², "
                                                   r"ddpm's var_type='learned' as log σ²"):
        save_diffusers(tmp_path / "out", cfg, diffusion, state)
    assert not (tmp_path / "out").exists()
    # learned_range means the same in both: it exports, and diffusers reads it back
    ranged = replace(diffusion, var_type="learned_range")
    out = save_diffusers(tmp_path / "ranged", cfg, ranged, state)
    assert diffusers.DDPMScheduler.from_pretrained(out, subfolder="scheduler").config.variance_type == "learned_range"


def test_a_diffusers_learned_variance_pipeline_is_refused(tmp_path, capsys):
    directory, _, _ = _pipeline(tmp_path, dict(variance_type="learned"), out_channels=2)
    with pytest.raises(DiffusersFormatError, match=r"variance_type='learned' is not supported: diffusers' .* as σ²"):
        load_diffusers(directory)
    capsys.readouterr()
    assert main(["convert", "--from-diffusers", str(directory), "--out", str(tmp_path / "ckpt")]) == 2
    assert "variance_type='learned'" in capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists()


# --- clip_sample ----------------------------------------------------------------------------------------------------

def test_clip_sample_false_is_reported_and_recorded(tmp_path, capsys):
    directory, _, _ = _pipeline(tmp_path, dict(clip_sample=False))
    assert load_diffusers(directory).clip_sample is False
    capsys.readouterr()
    assert main(["convert", "--from-diffusers", str(directory), "--out", str(tmp_path / "ckpt")]) == 0
    printed = capsys.readouterr().out
    assert "clip_sample=false" in printed and "pass --no-clip" in printed
    meta = json.loads((tmp_path / "ckpt" / "meta.json").read_text())
    assert meta["extra"]["diffusers"] == {"clip_sample": False}
    # the default (and the official models): clipping, said nothing about
    other, _, _ = _pipeline(tmp_path / "b", {})
    assert load_diffusers(other).clip_sample is True
    capsys.readouterr()
    main(["convert", "--from-diffusers", str(other), "--out", str(tmp_path / "ckpt2")])
    assert "note:" not in capsys.readouterr().out


def test_clip_sample_false_then_no_clip_equals_diffusers_step(tmp_path):
    directory, unet, sched = _pipeline(tmp_path, dict(clip_sample=False))
    imported = load_diffusers(directory)
    net = UNet(imported.model).eval()
    net.load_state_dict(imported.state_dict)
    diffusion = GaussianDiffusion.from_config(imported.diffusion)
    x_t = 3 * torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))  # x̂₀ far outside [-1, 1]
    noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours, p = diffusion.p_sample(net, x_t, torch.full((2,), 6), noise, clip_denoised=False)
        theirs = sched.step(unet(x_t, 5).sample, 5, x_t, generator=torch.Generator().manual_seed(5))
        clipped, _ = diffusion.p_sample(net, x_t, torch.full((2,), 6), noise, clip_denoised=True)
    assert p.pred_x0.abs().max() > 1.5 and (clipped - theirs.prev_sample).abs().max() > 0.1  # clipping matters
    torch.testing.assert_close(ours, theirs.prev_sample, rtol=5e-5, atol=1e-4)


@pytest.mark.parametrize("change", [{"clip_sample_range": 2.0}, {"clip_sample": "yes"}])
def test_a_clip_range_ddpm_cannot_sample_is_refused(change):
    with pytest.raises(DiffusersFormatError, match=f"scheduler config {next(iter(change))}="):
        diffusion_config_from_scheduler({"_class_name": "DDPMScheduler", **change})
    # a range is irrelevant when nothing is clipped
    diffusion_config_from_scheduler({"clip_sample": False, "clip_sample_range": 2.0})


# --- the official 256×256 models at full size (google/ddpm-{celebahq,church,bedroom,cat}-256) ---------------------

# unet/config.json of google/ddpm-celebahq-256 as published (church, bedroom and cat have the same network)
CONFIG_256 = {
    "_class_name": "UNet2DModel",
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 128, 256, 256, 512, 512],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
}


def test_the_official_256_network_imports_exactly_and_runs_as_diffusers():
    """114M parameters, attention at 16×16; outputs compared at 32×32 (the weights do not depend on the size)."""
    cfg = unet_config_from_diffusers(CONFIG_256)
    assert cfg == preset("celebahq256").model  # the paper's 256×256 U-Net, as our preset
    torch.manual_seed(0)
    theirs = diffusers.UNet2DModel(**{k: v for k, v in CONFIG_256.items() if not k.startswith("_")}).eval()
    with torch.no_grad():  # every weight random (none zero-initialized), at each layer's natural scale
        for name, p in theirs.named_parameters():
            if p.ndim > 1:
                p.normal_(0, p[0].numel() ** -0.5)
            else:
                p.normal_(1.0 if "norm" in name and name.endswith("weight") else 0.0, 0.1)
    n = count_parameters(theirs)
    assert 113_500_000 < n < 114_500_000, n  # the paper's 114M
    state = state_dict_from_diffusers(theirs.state_dict(), cfg)
    assert state_dict_to_diffusers(state, cfg).keys() == theirs.state_dict().keys()
    # 32 px: the attention level (16 of 256) is at 2 px
    small = UNet(replace(cfg, image_size=32, attn_resolutions=(2,))).eval()
    small.load_state_dict(state)
    assert count_parameters(small) == n
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for step in (0, 640):
        t = torch.tensor([step])
        with torch.no_grad():
            a, b = small(x, t), theirs(x, t).sample
        assert b.abs().max() > 0.05
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4 * b.abs().max().item())


# --- ddpm convert: options that do not apply ------------------------------------------------------------------------

def test_weights_with_from_diffusers_is_refused_not_ignored(tmp_path, capsys):
    directory, _, _ = _pipeline(tmp_path, {})
    capsys.readouterr()
    assert main(["convert", "--from-diffusers", str(directory), "--out", str(tmp_path / "ckpt"),
                 "--weights", "model"]) == 2
    err = capsys.readouterr().err
    assert "--weights model applies to --to-diffusers only" in err and err.count("\n") == 1
    assert not (tmp_path / "ckpt").exists()
    # export: EMA by default, --weights model when asked
    assert main(["convert", "--from-diffusers", str(directory), "--out", str(tmp_path / "ckpt")]) == 0
    for weights in ([], ["--weights", "model"]):
        out = tmp_path / f"back{len(weights)}"
        assert main(["convert", "--to-diffusers", str(tmp_path / "ckpt"), "--out", str(out), *weights]) == 0
        assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
