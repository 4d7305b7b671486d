"""Import/export of diffusers DDPM directories: same outputs as diffusers, exact round trips, clear errors."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ddpm.config import DiffusionConfig, UNetConfig, network_out_channels
from ddpm.interop import diffusers as diff_mod
from ddpm.interop.diffusers import (
    DiffusersFormatError,
    diffusion_config_from_scheduler,
    load_diffusers,
    save_diffusers,
    state_dict_from_diffusers,
    state_dict_to_diffusers,
    unet_config_from_diffusers,
)
from ddpm.nets.unet import UNet
from ddpm.schedules import make_betas

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
        DiffusionConfig(schedule="constant", T=50, beta_end=0.05, var_type="learned_range", loss_type="vlb"),
    ],
    ids=["linear", "quadratic-x0", "cosine-learned_range", "constant-learned_range-vlb"],
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
    # every schedule, cosine (diffusers' squaredcos_cap_v2) included, against diffusers' own betas
    ours = make_betas(diffusion.schedule, diffusion.T, diffusion.beta_start, diffusion.beta_end)
    torch.testing.assert_close(sched.betas.double(), ours, rtol=1e-5, atol=1e-9)


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
        ({"variance_type": "learned_range"}, "learned variance"),  # but the unet has 3 outputs for 3 inputs
        ({"variance_type": "learned"}, "variance_type='learned' is not supported: diffusers' .* σ², ddpm's .* log σ²"),
        ({"clip_sample_range": 1.5}, "clip_sample_range=1.5 is not supported"),
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
        save_diffusers(tmp_path, cfg, DiffusionConfig(var_type="learned_range", loss_type="vlb"), state)  # no Σ outputs
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
    ({"classes": {"num_classes": 10, "colour": 1}}, r"unknown fields \(1\): colour"),
])
def test_conditional_import_checks_its_classes_section(tmp_path: Path, extra: dict, match: str) -> None:
    model = _diffusers_unet({**SMALL256_CONFIG, "num_class_embeds": 11}, seed=5)
    model.save_pretrained(tmp_path / "unet")
    diffusers.DDPMScheduler().save_config(tmp_path / "scheduler")
    (tmp_path / "ddpm.json").write_text(json.dumps(extra))
    with pytest.raises(DiffusersFormatError, match=match):
        load_diffusers(tmp_path)


# --- hostile values: each a DiffusersFormatError naming the field, in one short line -----------------------------

TINY = UNetConfig(image_size=8, in_channels=1, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                  attn_resolutions=(4,), dropout=0.0, num_groups=8)
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def _tiny_pipeline(path: Path) -> Path:
    torch.manual_seed(0)
    return save_diffusers(path, TINY, DiffusionConfig(T=20, beta_end=0.2), UNet(TINY).state_dict())


def _add_header_entry(file: Path, name: str, shape: list[int]) -> None:
    """Add a tensor of no bytes (a 0 in its shape) to a safetensors header, whatever its other dimensions."""
    raw = file.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data)]}
    text = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(text)) + text + data)


BIG = 10**400  # a JSON integer that float() cannot convert (OverflowError)


@pytest.mark.parametrize("change, match", [
    ({"norm_eps": None}, r"norm_eps=None; expected a number"),
    ({"norm_eps": "abc"}, r"norm_eps='abc'; expected a number"),
    ({"norm_eps": [1e-6]}, r"norm_eps=\[1e-06\]; expected a number"),
    ({"norm_eps": BIG}, r"norm_eps=an integer of 1329 bits; expected a finite number"),
    ({"norm_eps": math.nan}, r"norm_eps=nan; expected a finite number"),
    ({"dropout": BIG}, r"dropout=an integer of 1329 bits; expected a finite number"),
    ({"dropout": "0.5"}, r"dropout='0.5'; expected a number"),
    ({"attention_head_dim": [256]}, r"attention_head_dim=\[256\]; expected an integer"),
    ({"attention_head_dim": {}}, r"attention_head_dim=\{\}; expected an integer"),
    ({"down_block_types": ["DownBlock2D", ["x"], "DownBlock2D", "DownBlock2D"]},
     r"down_block_types contains \[\['x'\]\]"),
    ({"up_block_types": [{}, "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]}, r"up_block_types contains \[\{\}\]"),
    ({"mid_block_type": "x" * 10**6}, r"mid_block_type='xxx.*…"),
    ({"freq_shift": True}, r"freq_shift=True is not supported; expected 1"),  # True == 1, but not a frequency shift
    ({"add_attention": 1}, r"add_attention=1 is not supported; expected True"),
], ids=["eps_null", "eps_str", "eps_list", "eps_bigint", "eps_nan", "dropout_bigint", "dropout_str", "head_dim_list",
        "head_dim_dict", "down_unhashable", "up_unhashable", "mid_1MB", "freq_shift_bool", "attention_int"])
def test_hostile_unet_config_values_name_the_field(change: dict, match: str) -> None:
    with pytest.raises(DiffusersFormatError, match=f"unet config {match}") as err:
        unet_config_from_diffusers({**CIFAR10_CONFIG, **change})
    assert len(str(err.value)) < 300


@pytest.mark.parametrize("change, match", [
    ({"beta_start": BIG}, r"beta_start=an integer of 1329 bits; expected a finite number"),
    ({"beta_end": -BIG}, r"beta_end=an integer of 1329 bits; expected a finite number"),
    ({"beta_start": math.nan}, r"beta_start=nan; expected a finite number"),
    ({"trained_betas": [BIG] * 1000}, r"trained_betas=an integer of 1329 bits; expected a finite number"),
    ({"variance_type": "v" * 10**6}, r"variance_type='vvv.*… is not supported"),
], ids=["beta_start_bigint", "beta_end_bigint", "beta_start_nan", "trained_betas_bigint", "variance_1MB"])
def test_hostile_scheduler_values_name_the_field(change: dict, match: str) -> None:
    with pytest.raises(DiffusersFormatError, match=f"scheduler config {match}") as err:
        diffusion_config_from_scheduler({"_class_name": "DDPMScheduler", **change})
    assert len(str(err.value)) < 300


@pytest.mark.parametrize("name", ["conv_in.bias", "zzz"])
@pytest.mark.parametrize("dim", [2**63 + 5, 2**64 - 1])
def test_a_huge_dimension_in_a_safetensors_header_is_named(tmp_path: Path, name: str, dim: int) -> None:
    """[0, 2**63+5] holds no bytes, but torch cannot make such a shape: compared as plain tuples, it is named."""
    pipe = _tiny_pipeline(tmp_path / "pipe")
    weights = pipe / WEIGHTS
    if name != "zzz":  # the real tensor replaced by the crafted one
        from safetensors.torch import load_file, save_file
        save_file({k: v for k, v in load_file(weights).items() if k != name}, weights)
    _add_header_entry(weights, name, [0, dim])
    expected = (rf"shape mismatch \(1\): conv_in.bias: \(0, {dim}\) != expected \(16,\)" if name != "zzz"
                else r"unexpected \(1\): zzz \(not a parameter of the DDPM U-Net\)")
    with pytest.raises(DiffusersFormatError, match=expected):
        load_diffusers(pipe)


@pytest.mark.parametrize("suffix", ["safetensors", "bin"])
@pytest.mark.parametrize("dtype, name", [(torch.int64, "I64|int64"), (torch.bool, "BOOL|bool"),
                                         (torch.float8_e4m3fn, "F8_E4M3|float8_e4m3fn")], ids=["i64", "bool", "f8"])
def test_non_float_weights_are_refused_at_import(tmp_path: Path, suffix: str, dtype: torch.dtype, name: str) -> None:
    """They imported before and wrote a checkpoint that does not load (loading refuses non-float tensors)."""
    pipe = _tiny_pipeline(tmp_path / "pipe")
    weights = pipe / WEIGHTS
    from safetensors.torch import load_file, save_file
    state = {k: v.to(dtype) for k, v in load_file(weights).items()}
    if suffix == "bin":
        weights.unlink()
        torch.save(state, weights.with_suffix(".bin"))
    else:
        save_file(state, weights)
    with pytest.raises(DiffusersFormatError, match=rf"diffusion_pytorch_model\.{suffix} holds non-float tensors "
                                                   rf"\(\d+\): conv_in.bias, .* \(dtype ({name}) for conv_in.bias\)"):
        load_diffusers(pipe)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_weights_of_other_float_dtypes_import(tmp_path: Path, dtype: torch.dtype) -> None:
    pipe = _tiny_pipeline(tmp_path / "pipe")
    from safetensors.torch import load_file, save_file
    save_file({k: v.to(dtype) for k, v in load_file(pipe / WEIGHTS).items()}, pipe / WEIGHTS)
    assert load_diffusers(pipe).model == TINY


def test_the_bin_dtype_check_is_the_safetensors_one(tmp_path: Path) -> None:
    """_is_loadable_float (for .bin tensors) accepts exactly the dtypes whose safetensors name is in WEIGHT_DTYPES."""
    from safetensors.torch import save_file
    dtypes = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2,
              torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool]
    save_file({str(d): torch.zeros(1, dtype=d) for d in dtypes}, tmp_path / "all.safetensors")
    header = diff_mod.read_safetensors_header(tmp_path / "all.safetensors")
    for d in dtypes:
        assert diff_mod._is_loadable_float(torch.zeros(1, dtype=d)) == (header[str(d)][0] in diff_mod.WEIGHT_DTYPES), d


def test_listings_of_a_crafted_file_are_capped() -> None:
    """100,000 unknown fields or tensor names (megabytes of message before), and a name of a megabyte."""
    fields = {f"zz{i:06d}": 1 for i in range(100_000)}
    with pytest.raises(DiffusersFormatError, match=r"does not know \(100000\): zz000000, .* … \(99995 more\)") as err:
        unet_config_from_diffusers({**CIFAR10_CONFIG, **fields})
    assert len(str(err.value)) < 300
    state = dict(UNet(TINY).to("meta").state_dict())
    state = {diff_mod.ours_to_diffusers_key(k, 2): v for k, v in state.items()}
    junk = {f"junk.{i:06d}.weight": torch.empty(0, device="meta") for i in range(100_000)}
    with pytest.raises(DiffusersFormatError) as err:
        state_dict_from_diffusers({**state, **junk, "y" * 10**6: torch.empty(0, device="meta")}, TINY)
    msg = str(err.value)
    assert "unexpected (100001): junk.000000.weight (not a parameter of the DDPM U-Net)" in msg
    assert "… (99996 more)" in msg and len(msg) < 1000


@pytest.mark.parametrize("key", ["down_blocks.².resnets.0.conv1.weight", "up_blocks.0.resnets.²³.conv1.weight",
                                 f"down_blocks.{'1' * 5000}.resnets.0.conv1.weight"], ids=["sup2", "sup23", "5000"])
def test_odd_block_numbers_in_tensor_names_are_unexpected_names(key: str) -> None:
    """'²'.isdigit() is true, but int('²') raises; so does int() of 5000 digits: neither is a bare ValueError."""
    state = {diff_mod.ours_to_diffusers_key(k, 2): v for k, v in UNet(TINY).to("meta").state_dict().items()}
    with pytest.raises(DiffusersFormatError, match=r"unexpected \(1\): .* \(not a parameter of the DDPM U-Net\)"):
        state_dict_from_diffusers({**state, key: torch.empty(0, device="meta")}, TINY)
