"""Import/export of diffusers DDPM directories: same outputs as diffusers, exact round trips, clear errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ddpm.config import DiffusionConfig, UNetConfig, network_out_channels
from ddpm.interop.diffusers import (
    DiffusersFormatError,
    load_diffusers,
    save_diffusers,
    state_dict_from_diffusers,
    state_dict_to_diffusers,
    unet_config_from_diffusers,
)
from ddpm.nets.unet import UNet

diffusers = pytest.importorskip("diffusers")

# google/ddpm-cifar10-32's unet/config.json as published (the paper's CIFAR-10 model)
CIFAR10_CONFIG = {
    "_class_name": "UNet2DModel",
    "_diffusers_version": "0.0.4",
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
# the 256x256 models' layout (6 levels, attention at 16x16), scaled down to stay fast: 64x64 input
SMALL256_CONFIG = {
    **CIFAR10_CONFIG,
    "block_out_channels": [32, 32, 64, 64, 128, 128],
    "sample_size": 64,
    "norm_num_groups": 16,
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
}


def _diffusers_unet(config: dict, seed: int = 0):
    """A UNet2DModel with every parameter random (no zero-initialized layer hides a mapping bug)."""
    model = diffusers.UNet2DModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            std = fan_in**-0.5 if p.ndim > 1 else 0.5
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


def _ours(imported) -> UNet:
    net = UNet(imported.model).eval()
    net.load_state_dict(imported.state_dict)
    return net


def _assert_same_outputs(ours: UNet, theirs, size: int, channels: int = 3) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, channels, size, size, generator=gen)
    t = torch.tensor([0, 999, int(torch.randint(1, 999, (1,), generator=gen)), 500])
    with torch.no_grad():
        a, b = ours(x, t), theirs(x, t).sample
        a_float = ours(x, t.float())
    assert b.abs().max() > 0.05  # the comparison is not between two near-zero outputs
    assert (a - b).abs().max().item() < 1e-5
    assert (a_float - b).abs().max().item() < 1e-5


@pytest.fixture(scope="module")
def cifar10_dir(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("ddpm-cifar10-32")
    model = _diffusers_unet(CIFAR10_CONFIG)
    model.save_pretrained(root / "unet")
    diffusers.DDPMScheduler(variance_type="fixed_small", clip_sample=True).save_config(root / "scheduler")
    return root, model


def test_cifar10_import_matches_diffusers(cifar10_dir) -> None:
    root, model = cifar10_dir
    imported = load_diffusers(root)
    assert imported.model == UNetConfig(dropout=0.0)  # the paper's CIFAR-10 U-Net (diffusers stores no dropout)
    assert imported.diffusion == DiffusionConfig(var_type="fixed_beta_tilde")
    _assert_same_outputs(_ours(imported), model, 32)


def test_cifar10_export_round_trip_and_diffusers_loads_it(cifar10_dir, tmp_path: Path) -> None:
    root, model = cifar10_dir
    imported = load_diffusers(root)
    out = save_diffusers(tmp_path / "export", imported.model, imported.diffusion, imported.state_dict)
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    again = load_diffusers(out)
    assert again.model == imported.model and again.diffusion == imported.diffusion
    assert again.state_dict.keys() == imported.state_dict.keys()
    for k, v in imported.state_dict.items():
        assert torch.equal(again.state_dict[k], v), k
    # diffusers reads our export: same weights, same scheduler, same outputs
    theirs = diffusers.UNet2DModel.from_pretrained(out, subfolder="unet").eval()
    sched = diffusers.DDPMScheduler.from_pretrained(out, subfolder="scheduler")
    assert sched.config.variance_type == "fixed_small" and sched.config.prediction_type == "epsilon"
    assert sched.config.num_train_timesteps == 1000
    torch.testing.assert_close(sched.betas, torch.linspace(1e-4, 0.02, 1000), rtol=0, atol=1e-9)
    for name, p in model.state_dict().items():
        assert torch.equal(theirs.state_dict()[name], p), name
    _assert_same_outputs(_ours(again), theirs, 32)
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    assert isinstance(pipe.unet, diffusers.UNet2DModel) and isinstance(pipe.scheduler, diffusers.DDPMScheduler)


def test_top_level_layout_and_bin_weights(tmp_path: Path) -> None:
    """The original google/ddpm-* layout: config.json, .bin weights and scheduler_config.json at the top."""
    model = _diffusers_unet(SMALL256_CONFIG, seed=3)
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").is_file()
    diffusers.DDPMScheduler(beta_schedule="scaled_linear", variance_type="fixed_large").save_config(tmp_path)
    imported = load_diffusers(tmp_path)
    assert imported.diffusion.schedule == "quadratic" and imported.diffusion.var_type == "fixed_beta"
    _assert_same_outputs(_ours(imported), model, 64)


def test_256_style_import_export_matches_diffusers(tmp_path: Path) -> None:
    model = _diffusers_unet(SMALL256_CONFIG, seed=2)
    model.save_pretrained(tmp_path / "src" / "unet")
    diffusers.DDPMScheduler().save_config(tmp_path / "src" / "scheduler")
    imported = load_diffusers(tmp_path / "src")
    assert imported.model == UNetConfig(
        image_size=64,
        base_channels=32,
        channel_mults=(1, 1, 2, 2, 4, 4),
        num_res_blocks=1,
        attn_resolutions=(16,),
        dropout=0.0,
        num_groups=16,
    )
    _assert_same_outputs(_ours(imported), model, 64)
    out = save_diffusers(tmp_path / "out", imported.model, imported.diffusion, imported.state_dict)
    again = load_diffusers(out)
    assert again.model == imported.model and again.diffusion == imported.diffusion
    assert all(torch.equal(again.state_dict[k], v) for k, v in imported.state_dict.items())
    theirs = diffusers.UNet2DModel.from_pretrained(out, subfolder="unet").eval()
    _assert_same_outputs(_ours(again), theirs, 64)


def test_legacy_attention_names(cifar10_dir) -> None:
    """diffusers < 0.15 AttentionBlock names (query/key/value/proj_attn), as in the hub's .bin files."""
    root, model = cifar10_dir
    legacy = {}
    for k, v in model.state_dict().items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            k = k.replace(f".{new}.", f".{old}.")
        legacy[k] = v
    assert any(".proj_attn." in k for k in legacy)
    ours = state_dict_from_diffusers(legacy, load_diffusers(root).model)
    assert all(torch.equal(ours[k], v) for k, v in load_diffusers(root).state_dict.items())


@pytest.mark.parametrize(
    "diffusion",
    [
        DiffusionConfig(),
        DiffusionConfig(schedule="quadratic", var_type="fixed_beta_tilde", mean_type="x0", levels=17),
        DiffusionConfig(schedule="cosine", T=400, var_type="learned_range", loss_type="hybrid", hybrid_lambda=0.01),
        DiffusionConfig(schedule="constant", T=50, beta_end=0.05, var_type="learned", loss_type="vlb"),
    ],
    ids=["linear", "quadratic-x0", "cosine-learned_range", "constant-learned"],
)
def test_diffusion_config_round_trip(diffusion: DiffusionConfig, tmp_path: Path) -> None:
    cfg = UNetConfig(
        image_size=8,
        in_channels=1,
        base_channels=16,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(4,),
        dropout=0.1,
        num_groups=8,
    )
    torch.manual_seed(0)
    state = UNet(cfg, network_out_channels(cfg, diffusion)).state_dict()
    out = save_diffusers(tmp_path, cfg, diffusion, state)
    again = load_diffusers(out)
    assert again.model == cfg and again.diffusion == diffusion
    assert all(torch.equal(again.state_dict[k], v) for k, v in state.items())
    sched = diffusers.DDPMScheduler.from_pretrained(out, subfolder="scheduler")
    betas = {"linear": None, "quadratic": torch.linspace(1e-4**0.5, 0.02**0.5, 1000) ** 2}.get(diffusion.schedule)
    if betas is not None:
        torch.testing.assert_close(sched.betas, betas, rtol=1e-5, atol=1e-9)
    if diffusion.schedule == "constant":
        assert torch.allclose(sched.betas, torch.full((50,), 0.05))


def test_state_dict_errors_list_every_problem(cifar10_dir) -> None:
    root, model = cifar10_dir
    cfg = load_diffusers(root).model
    sd = dict(model.state_dict())
    del sd["mid_block.attentions.0.to_q.weight"]
    del sd["conv_out.bias"]
    sd["down_blocks.0.resnets.0.extra.weight"] = torch.zeros(3)
    sd["time_embedding.linear_2.weight"] = torch.zeros(512, 256)
    with pytest.raises(ValueError) as err:
        state_dict_from_diffusers(sd, cfg)
    msg = str(err.value)
    assert "missing (2): conv_out.bias, mid.attn_1.q.weight" in msg
    assert "unexpected (1): down_blocks.0.resnets.0.extra.weight" in msg
    assert "shape mismatch (1): temb.dense1.weight: (512, 256) != expected (512, 512)" in msg

    ours = load_diffusers(root).state_dict
    del ours["up.0.block.2.nin_shortcut.bias"]
    ours["nonsense"] = torch.zeros(1)
    ours["conv_in.weight"] = torch.zeros(128, 3, 5, 5)
    with pytest.raises(ValueError) as err:
        state_dict_to_diffusers(ours, cfg)
    msg = str(err.value)
    assert "missing (1): up.0.block.2.nin_shortcut.bias" in msg and "unexpected (1): nonsense" in msg
    assert "conv_in.weight: (128, 3, 5, 5) != expected (128, 3, 3, 3)" in msg
    with pytest.raises(ValueError, match="missing"):
        save_diffusers(Path(root).parent / "never", cfg, DiffusionConfig(), ours)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"flip_sin_to_cos": True}, "flip_sin_to_cos"),
        ({"freq_shift": 0}, "freq_shift"),
        ({"norm_eps": 1e-5}, "norm_eps"),
        ({"downsample_padding": 1}, "downsample_padding"),
        ({"attention_head_dim": 8}, "attention_head_dim"),
        ({"time_embedding_type": "fourier"}, "time_embedding_type"),
        (
            {"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"]},
            "down_block_types",
        ),
        ({"up_block_types": ["UpBlock2D", "UpBlock2D", "UpBlock2D", "AttnUpBlock2D"]}, "up_block_types"),
        ({"out_channels": 4}, "out_channels"),
        ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
        ({"cross_attention_dim": 768}, "cross_attention_dim"),
        ({"_class_name": "UNet2DConditionModel"}, "_class_name"),
    ],
)
def test_unsupported_unet_config_names_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        unet_config_from_diffusers({**CIFAR10_CONFIG, **change})


def test_missing_defaults_are_diffusers_defaults() -> None:
    """A field absent from config.json means diffusers' default, e.g. flip_sin_to_cos=True: unsupported."""
    cfg = {k: v for k, v in CIFAR10_CONFIG.items() if k != "flip_sin_to_cos"}
    with pytest.raises(ValueError, match="flip_sin_to_cos=True"):
        unet_config_from_diffusers(cfg)
    assert unet_config_from_diffusers(CIFAR10_CONFIG) == UNetConfig(dropout=0.0)
    # Σ outputs: the same network config; the scheduler's variance_type says Σ is learned (checked on load)
    assert unet_config_from_diffusers({**CIFAR10_CONFIG, "out_channels": 6}) == UNetConfig(dropout=0.0)


@pytest.mark.parametrize(
    "scheduler, match",
    [
        ({"prediction_type": "v_prediction"}, "prediction_type='v_prediction'"),
        ({"trained_betas": [0.1, 0.2] * 500}, "trained_betas"),
        ({"beta_schedule": "sigmoid"}, "beta_schedule='sigmoid'"),
        ({"variance_type": "something"}, "variance_type='something'"),
        ({"thresholding": True}, "thresholding"),
        ({"variance_type": "learned"}, "learned variance"),  # but the unet has 3 outputs for 3 inputs
    ],
)
def test_unsupported_scheduler_config(cifar10_dir, tmp_path: Path, scheduler: dict, match: str) -> None:
    root, _ = cifar10_dir
    (tmp_path / "unet").symlink_to(root / "unet", target_is_directory=True)
    (tmp_path / "scheduler").mkdir()
    config = {"_class_name": "DDPMScheduler", **scheduler}
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):
        load_diffusers(tmp_path)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_diffusers(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text(json.dumps(CIFAR10_CONFIG))
    with pytest.raises(FileNotFoundError, match="unet weights"):
        load_diffusers(tmp_path)


def test_export_rejects_inconsistent_configs(tmp_path: Path) -> None:
    cfg = UNetConfig(
        image_size=8,
        in_channels=1,
        base_channels=16,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(4,),
        num_groups=8,
    )
    state = UNet(cfg).state_dict()
    with pytest.raises(DiffusersFormatError, match=r"conv_out.weight: \(1, 16, 3, 3\) != expected \(2, 16, 3, 3\)"):
        save_diffusers(tmp_path, cfg, DiffusionConfig(var_type="learned", loss_type="vlb"), state)  # no Σ outputs
    with pytest.raises(DiffusersFormatError, match="mean_type='mu'"):
        save_diffusers(tmp_path, cfg, DiffusionConfig(mean_type="mu", loss_type="mu_mse"), state)
    with pytest.raises(DiffusersFormatError, match="attn_resolutions"):
        save_diffusers(tmp_path, replace(cfg, attn_resolutions=(3,)), DiffusionConfig(), state)


# --- class-conditional models: num_class_embeds ----------------------------------------------------------------

def test_conditional_import_matches_diffusers_with_class_labels_and_round_trips(tmp_path: Path) -> None:
    config = {**SMALL256_CONFIG, "num_class_embeds": 11}  # 10 classes and the "no class" row 10
    model = _diffusers_unet(config, seed=4)
    model.save_pretrained(tmp_path / "src" / "unet")
    diffusers.DDPMScheduler().save_config(tmp_path / "src" / "scheduler")
    with pytest.raises(DiffusersFormatError, match=r"num_class_embeds=11: ddpm reads its last row as the 'no class' "
                                                   r"input .* \{\"classes\": \{\"num_classes\": 10\}\}"):
        load_diffusers(tmp_path / "src")
    (tmp_path / "src" / "ddpm.json").write_text(json.dumps({"classes": {"num_classes": 10}}))
    imported = load_diffusers(tmp_path / "src")
    assert imported.model.num_classes == 10 and imported.class_names is None
    ours = UNet(imported.model).eval()
    ours.load_state_dict(imported.state_dict)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 64, 64, generator=gen)
    t = torch.tensor([0, 999, 321, 500])
    y = torch.tensor([0, 9, 10, 4])
    with torch.no_grad():
        a, b = ours(x, t, y=y), model(x, t, class_labels=y).sample
        other = ours(x, t, y=torch.tensor([1, 2, 3, 5]))
    assert b.abs().max() > 0.05 and (a - other).abs().max() > 1e-3  # the labels matter
    assert (a - b).abs().max().item() < 1e-5
    names = tuple(f"class {k}" for k in range(10))
    out = save_diffusers(tmp_path / "out", imported.model, imported.diffusion, imported.state_dict,
                         class_names=names, label_dropout=0.2)
    again = load_diffusers(out)
    assert again.model == imported.model and again.class_names == names and again.label_dropout == 0.2
    assert again.state_dict.keys() == imported.state_dict.keys()
    assert all(torch.equal(again.state_dict[k], v) for k, v in imported.state_dict.items())
    theirs = diffusers.UNet2DModel.from_pretrained(out, subfolder="unet").eval()
    assert theirs.config.num_class_embeds == 11
    with torch.no_grad():
        assert torch.equal(theirs(x, t, class_labels=y).sample, b)


def test_conditional_checkpoint_converts_both_ways_with_its_class_names(tmp_path: Path) -> None:
    from ddpm.checkpoint import save_model
    from ddpm.config import override, preset
    from ddpm.interop.convert import from_diffusers, to_diffusers
    from ddpm.loading import load_model

    cfg = override(preset("digits"), base_channels=16, channel_mults=[1, 2], attn_resolutions=[4], num_groups=8,
                   num_classes=3, label_dropout=0.0)
    torch.manual_seed(0)
    state = UNet(cfg.model).state_dict()
    ck = save_model(tmp_path / "ck", cfg.to_dict(), state, extra={"class_names": ["cat", "dog", "emu"]})
    exported = to_diffusers(ck, tmp_path / "pipe")
    back = load_model(from_diffusers(exported, tmp_path / "back"))
    assert back.class_names == ("cat", "dog", "emu") and back.num_classes == 3 and not back.null_class_trained
    assert all(torch.equal(back.net.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize("extra, match", [
    ({"classes": {"num_classes": 9}}, r"must confirm with"),
    ({"classes": {"num_classes": 10, "class_names": ["a"] * 10}}, r"must list 10 distinct names"),
    ({"classes": {"num_classes": 10, "label_dropout": 2}}, r"label_dropout' must be a number in \[0, 1\]"),
    ({"classes": {"num_classes": 10, "colour": 1}}, r"unknown fields \['colour'\]"),
])
def test_conditional_import_checks_its_classes_section(tmp_path: Path, extra: dict, match: str) -> None:
    model = _diffusers_unet({**SMALL256_CONFIG, "num_class_embeds": 11}, seed=5)
    model.save_pretrained(tmp_path / "unet")
    diffusers.DDPMScheduler().save_config(tmp_path / "scheduler")
    (tmp_path / "ddpm.json").write_text(json.dumps(extra))
    with pytest.raises(DiffusersFormatError, match=match):
        load_diffusers(tmp_path)
