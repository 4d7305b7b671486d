"""Import and export diffusers ``DDPMPipeline`` directories (``google/ddpm-*`` and our exports).

Nothing here imports diffusers: a pipeline directory is JSON plus one weight file, read with
``safetensors`` (or, for ``.bin`` files, ``torch.load(weights_only=True)``). Accepted layouts:

- ``unet/config.json`` + ``unet/diffusion_pytorch_model.safetensors`` (or ``.bin``) and
  ``scheduler/scheduler_config.json``, with ``model_index.json`` at the top (what ``save_diffusers``
  writes, and what ``DDPMPipeline.save_pretrained`` writes);
- the same files at the top level (the original ``google/ddpm-cifar10-32`` layout).

The diffusers ``UNet2DModel`` configurations that are the paper's U-Net are accepted: positional
time embedding without the sin/cos flip and with ``freq_shift=1``, single-head attention,
GroupNorm ε = 1e-6, TensorFlow-style stride-2 downsampling (``downsample_padding=0``), blocks
``DownBlock2D``/``AttnDownBlock2D`` and ``UpBlock2D``/``AttnUpBlock2D``. Anything else is a
``DiffusersFormatError`` naming the field. On the scheduler side, ``variance_type='learned'`` is refused both ways
(diffusers reads those channels as σ², ddpm as log σ²), and so is clipping x̂₀ to a range other than [-1, 1];
``clip_sample=false`` is reported (``DiffusersImport.clip_sample``). Options of ours that diffusers has no field for
(``loss_type``, ``hybrid_lambda``, ``levels``) travel in an extra top-level ``ddpm.json``.

A class-conditional U-Net (``num_classes`` = K) is diffusers' ``num_class_embeds`` = K + 1 (a class embedding
added to the time embedding), its last row K the "no class" input of classifier-free guidance. That convention
is ours, so ``ddpm.json``'s ``classes`` section says so (``num_classes``, and the class names and label dropout
it was trained with); a conditional model without it is refused: its last row may be a class of its own.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddpm.checkpoint import (
    CheckpointError,
    read_json,
    read_safetensors_header,
    remove_leftovers,
    safe_torch_load,
    save_safetensors,
)
from ddpm.config import (
    LEARNED_VAR_TYPES,
    MAX_IMAGE_SIZE,
    MAX_T,
    DiffusionConfig,
    UNetConfig,
    cut,
    network_out_channels,
    shown,
)
from ddpm.loading import WEIGHT_DTYPES, listed, tensor_budget
from ddpm.nets.unet import GROUPNORM_EPS, UNet
from ddpm.outputs import check_output_dir, replace_dir, write_text

__all__ = [
    "DiffusersFormatError",
    "DiffusersImport",
    "diffusers_to_ours_key",
    "diffusion_config_from_scheduler",
    "diffusion_config_to_scheduler",
    "load_diffusers",
    "ours_to_diffusers_key",
    "save_diffusers",
    "scheduler_clips",
    "state_dict_from_diffusers",
    "state_dict_to_diffusers",
    "unet_config_from_diffusers",
    "unet_config_to_diffusers",
]

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
EXTRA_NAME = "ddpm.json"  # our options diffusers has no field for

# Bounds on the unet config fields that size the network (issue 13), checked before anything is built: the
# google/ddpm-* models have 4-6 levels of 128-512 channels, 2 layers per block, 32-256 px. Widths need no bound
# of their own: the network is built on the meta device and compared with the weight file before loading.
MAX_SAMPLE_SIZE = MAX_IMAGE_SIZE
MAX_LEVELS = 16
MAX_LAYERS_PER_BLOCK = 64
MAX_WIDTH = 1 << 16
MAX_CLASS_EMBEDS = 1 << 20  # ImageNet-21k has ~21,800 classes
MAX_NAME_CHARS = 100  # a tensor or field name shown in an error message is cut to this


class DiffusersFormatError(CheckpointError):
    """A diffusers directory, config or state dict is not the paper's DDPM model; the message says why."""


@dataclass
class DiffusersImport:
    """An imported diffusers DDPM: our configs and the weights under our parameter names."""

    model: UNetConfig
    diffusion: DiffusionConfig
    state_dict: dict[str, Tensor]
    class_names: tuple[str, ...] | None = None  # a class-conditional model's class names, if stored
    label_dropout: float | None = None          # what trained its "no class" row (0: never trained)
    clip_sample: bool = True                    # whether diffusers' scheduler clips x̂₀ (False: sample with --no-clip)


# --- parameter names -----------------------------------------------------------------------------

_RESNET = {
    "norm1": "norm1",
    "conv1": "conv1",
    "temb_proj": "time_emb_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "nin_shortcut": "conv_shortcut",
}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
# names of diffusers' AttentionBlock before 0.15, still in the google/ddpm-* .bin files
_LEGACY_ATTN = {"query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}
_RESNET_BACK = {v: k for k, v in _RESNET.items()}
_ATTN_BACK = {**{v: k for k, v in _ATTN.items()}, **_LEGACY_ATTN}
_TOP = {
    "temb.dense0": "time_embedding.linear_1",
    "temb.dense1": "time_embedding.linear_2",
    "conv_in": "conv_in",
    "norm_out": "conv_norm_out",
    "conv_out": "conv_out",
    "class_embed": "class_embedding",
}
_TOP_BACK = {v: k for k, v in _TOP.items()}
_MID = {"block_1": "resnets.0", "attn_1": "attentions.0", "block_2": "resnets.1"}
_MID_BACK = {v: k for k, v in _MID.items()}


def _is_index(part: str) -> bool:
    """A block or level number in a parameter name: ``'²'.isdigit()`` is true, but int('²') fails."""
    return part.isascii() and part.isdigit() and len(part) <= 6


def ours_to_diffusers_key(key: str, num_levels: int) -> str | None:
    """Our parameter name → diffusers' ``UNet2DModel`` name (None if the name is not ours)."""
    module, _, param = key.rpartition(".")
    if module in _TOP:
        return f"{_TOP[module]}.{param}"
    parts = module.split(".")
    match parts:
        case ["mid", ("block_1" | "block_2") as blk, layer] if layer in _RESNET:
            return f"mid_block.{_MID[blk]}.{_RESNET[layer]}.{param}"
        case ["mid", "attn_1", layer] if layer in _ATTN:
            return f"mid_block.attentions.0.{_ATTN[layer]}.{param}"
        case [("down" | "up") as path, level, kind, *rest] if _is_index(level):
            i = int(level)
            if path == "down":
                prefix, resampler = f"down_blocks.{i}", "downsamplers"
            else:  # diffusers numbers the up blocks in the order they run, deepest first
                prefix, resampler = f"up_blocks.{num_levels - 1 - i}", "upsamplers"
            match [kind, *rest]:
                case ["block", j, layer] if _is_index(j) and layer in _RESNET:
                    return f"{prefix}.resnets.{j}.{_RESNET[layer]}.{param}"
                case ["attn", j, layer] if _is_index(j) and layer in _ATTN:
                    return f"{prefix}.attentions.{j}.{_ATTN[layer]}.{param}"
                case ["resample", "conv"]:
                    return f"{prefix}.{resampler}.0.conv.{param}"
    return None


def diffusers_to_ours_key(key: str, num_levels: int) -> str | None:
    """A diffusers ``UNet2DModel`` parameter name (current or pre-0.15) → ours (None if unknown)."""
    module, _, param = key.rpartition(".")
    if module in _TOP_BACK:
        return f"{_TOP_BACK[module]}.{param}"
    parts = module.split(".")
    match parts:
        case ["mid_block", ("resnets" | "attentions") as kind, j, *layer]:
            ours = _MID_BACK.get(f"{kind}.{j}")
            table = _RESNET_BACK if kind == "resnets" else _ATTN_BACK
            name = table.get(".".join(layer))
            if ours is not None and name is not None:
                return f"mid.{ours}.{name}.{param}"
        case [("down_blocks" | "up_blocks") as path, level, kind, j, *layer] if _is_index(level) and _is_index(j):
            i = int(level)
            if path == "down_blocks":
                prefix, resampler = f"down.{i}", "downsamplers"
            else:
                prefix, resampler = f"up.{num_levels - 1 - i}", "upsamplers"
            if kind == "resnets" and ".".join(layer) in _RESNET_BACK:
                return f"{prefix}.block.{j}.{_RESNET_BACK['.'.join(layer)]}.{param}"
            if kind == "attentions" and ".".join(layer) in _ATTN_BACK:
                return f"{prefix}.attn.{j}.{_ATTN_BACK['.'.join(layer)]}.{param}"
            if kind == resampler and j == "0" and layer == ["conv"]:
                return f"{prefix}.resample.conv.{param}"
    return None


def _expected_shapes(cfg: UNetConfig, out_channels: int | None, held: int | None = None) -> dict[str, tuple[int, ...]]:
    """Our parameter names and shapes for ``cfg``, from a model on the meta device (no memory, no init).

    With ``held`` (the tensors a weight file holds) the build stops once it has made far more than that.
    """
    with contextlib.ExitStack() as stack:
        if held is not None:
            stack.enter_context(tensor_budget(2 * held + 64, "the diffusers weights", held, DiffusersFormatError))
        stack.enter_context(torch.device("meta"))
        net = UNet(cfg, out_channels)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _check_shapes(
    shapes: Mapping[str, tuple[int, ...]],
    expected: dict[str, tuple[int, ...]],
    what: str,
    unmapped: list[str] | None = None,
) -> None:
    """Raise one DiffusersFormatError listing the missing, unexpected and mis-shaped tensors (a few of each).

    Shapes are plain tuples of ints (as a safetensors header gives them): no tensor is made, so a crafted
    dimension of 2**63 is a mismatch to report, not an error of torch's.
    """
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(_clip(k) for k in set(shapes) - set(expected)) + sorted(unmapped or [])  # names cut short
    mismatched = sorted(
        f"{_clip(k)}: {shown(s, 60)} != expected {expected[k]}"
        for k, s in shapes.items()
        if k in expected and s != expected[k]
    )
    if missing or unexpected or mismatched:
        lines = [f"{what} does not match the configured U-Net:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                lines.append(f"  {title} {listed(items)}")
        raise DiffusersFormatError("\n".join(lines))


def _our_names(keys: Iterable[str], num_levels: int) -> tuple[dict[str, str], list[str]]:
    """(our name → the diffusers name it came from, a note on every diffusers name that is not one of ours)."""
    ours: dict[str, str] = {}
    unmapped: list[str] = []
    for key in keys:
        name = diffusers_to_ours_key(key, num_levels)
        if name is None:
            unmapped.append(f"{_clip(key)} (not a parameter of the DDPM U-Net)")
        elif name in ours:
            unmapped.append(f"{_clip(key)} (a second copy of {_clip(name)})")
        else:
            ours[name] = key
    return ours, unmapped


def state_dict_from_diffusers(state_dict: dict[str, Tensor], cfg: UNetConfig,
                              out_channels: int | None = None) -> dict[str, Tensor]:
    """A diffusers ``UNet2DModel`` state dict → ours, checked against ``cfg`` (every problem listed).

    ``out_channels``: the network's outputs (default ``cfg.in_channels``; twice that with a learned Σ).

    The tensors may be on the meta device: nothing is read or copied.
    """
    names, unmapped = _our_names(state_dict, len(cfg.channel_mults))
    _check_shapes({ours: tuple(state_dict[key].shape) for ours, key in names.items()},
                  _expected_shapes(cfg, out_channels, len(state_dict)), "the diffusers state dict (in our names)",
                  unmapped)
    return {ours: state_dict[key] for ours, key in names.items()}


def _check_header(header: Mapping[str, tuple[str, tuple[int, ...]]], cfg: UNetConfig, out_channels: int,
                  file: Path) -> None:
    """A safetensors header's names, shapes and dtypes against ``cfg``, before any tensor is read."""
    names, unmapped = _our_names(header, len(cfg.channel_mults))
    _check_shapes({ours: header[key][1] for ours, key in names.items()},
                  _expected_shapes(cfg, out_channels, len(header)), f"{file} (in our names)", unmapped)
    _refuse_non_floats(file, {key: dtype for key, (dtype, _) in header.items() if dtype not in WEIGHT_DTYPES})


def _is_loadable_float(t: Tensor) -> bool:
    """loading.WEIGHT_DTYPES in torch's terms: float16, bfloat16, float32, float64 (float8 is floating point too)."""
    return t.is_floating_point() and t.itemsize >= 2


def _refuse_non_floats(file: Path, bad: dict[str, str]) -> None:
    """``bad``: tensor name → dtype of the weights a checkpoint could not hold (loading refuses them)."""
    if bad:
        first = min(bad)
        raise DiffusersFormatError(f"{file} holds non-float tensors {_names(sorted(bad))} (dtype "
                                   f"{_clip(bad[first])} for {_clip(first)}); network weights are floats "
                                   f"({', '.join(sorted(WEIGHT_DTYPES))})")


def _clip(name: str) -> str:
    """A name from a file, cut short: one may be megabytes long."""
    return cut(name, MAX_NAME_CHARS)


def _names(items: list[str]) -> str:
    """'(N): a, b, … (M more)': the count and the first few names, each cut short (one short line however many)."""
    return listed([_clip(k) for k in items])


def state_dict_to_diffusers(state_dict: dict[str, Tensor], cfg: UNetConfig,
                            out_channels: int | None = None) -> dict[str, Tensor]:
    """Our state dict → diffusers' ``UNet2DModel`` names, checked against ``cfg`` (and ``out_channels``) first."""
    _check_shapes({k: tuple(v.shape) for k, v in state_dict.items()}, _expected_shapes(cfg, out_channels),
                  "the state dict")
    levels = len(cfg.channel_mults)
    out = {}
    for key, value in state_dict.items():
        name = ours_to_diffusers_key(key, levels)
        assert name is not None, key  # every expected key maps
        out[name] = value
    return out


# --- the U-Net configuration ---------------------------------------------------------------------

# UNet2DModel's defaults: a field absent from config.json has this value in diffusers
_UNET_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896],
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}

# fields that must hold the paper's value: (value, why)
_UNET_REQUIRED: dict[str, tuple[Any, str]] = {
    "center_input_sample": (False, "inputs are already in [-1, 1]"),
    "time_embedding_type": ("positional", "the Transformer sinusoidal embedding"),
    "flip_sin_to_cos": (False, "the official embedding is [sin | cos]"),
    "freq_shift": (1, "frequencies 10000^(-i/(d/2-1)) as in the official code"),
    "mid_block_type": ("UNetMidBlock2D", "res, attention, res"),
    "mid_block_scale_factor": (1, "no output rescaling"),
    "downsample_padding": (0, "TensorFlow 'SAME' padding of the stride-2 conv"),
    "downsample_type": ("conv", "stride-2 conv downsampling"),
    "upsample_type": ("conv", "nearest ×2 then conv"),
    "act_fn": ("silu", "swish nonlinearity"),
    "resnet_time_scale_shift": ("default", "the time embedding is added, not scale-shift"),
    "add_attention": (True, "the middle block has attention"),
    "class_embed_type": (None, "a class embedding is a learned table (num_class_embeds), added to the time "
                               "embedding"),
}

_DOWN_TYPES = {"DownBlock2D": False, "AttnDownBlock2D": True}
_UP_TYPES = {"UpBlock2D": False, "AttnUpBlock2D": True}


def unet_config_from_diffusers(config: dict[str, Any]) -> UNetConfig:
    """A diffusers ``UNet2DModel`` config.json → UNetConfig; an unsupported field is a clear error."""
    cls = config.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise DiffusersFormatError(f"unet config _class_name={shown(cls, 60)}; expected 'UNet2DModel'")
    unknown = sorted(
        k for k, v in config.items() if not k.startswith("_") and k not in _UNET_DEFAULTS and v is not None
    )
    if unknown:
        raise DiffusersFormatError(f"unet config has fields this importer does not know {_names(unknown)}")
    c = {**_UNET_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    for name, (want, why) in _UNET_REQUIRED.items():
        if c[name] != want or isinstance(c[name], bool) != isinstance(want, bool):  # true == 1 is no freq_shift
            raise DiffusersFormatError(f"unet config {name}={shown(c[name], 60)} is not supported; expected {want!r} "
                                       f"({why})")
    if not math.isclose(_number("unet config", "norm_eps", c["norm_eps"]), GROUPNORM_EPS, rel_tol=1e-6):
        raise DiffusersFormatError(f"unet config norm_eps={shown(c['norm_eps'], 60)} is not supported; expected 1e-06")

    size = c["sample_size"]
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise DiffusersFormatError(f"unet config sample_size={shown(size, 60)}: only square images are supported")
        size = size[0]
    size = _int_field("sample_size", size, 1, MAX_SAMPLE_SIZE)
    raw = c["block_out_channels"]
    if not isinstance(raw, (list, tuple)) or not 1 <= len(raw) <= MAX_LEVELS:
        raise DiffusersFormatError(f"unet config block_out_channels={shown(raw, 60)}; expected a list of "
                                   f"1..{MAX_LEVELS} widths")
    widths = [_int_field("block_out_channels", w, 1, MAX_WIDTH) for w in raw]
    for name, lo, hi in (("layers_per_block", 1, MAX_LAYERS_PER_BLOCK), ("norm_num_groups", 1, MAX_WIDTH),
                         ("in_channels", 1, MAX_WIDTH), ("out_channels", 1, MAX_WIDTH)):
        _int_field(name, c[name], lo, hi)
    for name in ("down_block_types", "up_block_types"):
        if not isinstance(c[name], (list, tuple)):
            raise DiffusersFormatError(f"unet config {name}={shown(c[name], 60)}; expected a list of block types")
    base = widths[0]
    if not widths or any(w % base for w in widths):
        raise DiffusersFormatError(f"unet config block_out_channels={widths!r}: expected multiples of the first width")
    down, up = list(c["down_block_types"]), list(c["up_block_types"])
    if len(down) != len(widths) or len(up) != len(widths):
        raise DiffusersFormatError(
            f"unet config has {len(widths)} block_out_channels, {len(down)} down_block_types and "
            f"{len(up)} up_block_types; expected equal numbers"
        )
    for field, types, table in (("down_block_types", down, _DOWN_TYPES), ("up_block_types", up, _UP_TYPES)):
        bad = [t for t in types if not isinstance(t, str) or t not in table]  # a list is no key (unhashable)
        if bad:
            raise DiffusersFormatError(f"unet config {field} contains {shown(bad, 60)}; supported: {sorted(table)}")
    attn_down = [_DOWN_TYPES[t] for t in down]
    attn_up = [_UP_TYPES[t] for t in reversed(up)]  # up blocks run deepest first
    if attn_down != attn_up:
        raise DiffusersFormatError(
            f"unet config down_block_types={down} and up_block_types={up} put attention at different "
            "resolutions; the paper's U-Net uses the same resolutions on both paths"
        )
    if c["time_embedding_dim"] not in (None, 4 * base):
        raise DiffusersFormatError(
            f"unet config time_embedding_dim={shown(c['time_embedding_dim'], 60)}; expected None or {4 * base}"
        )
    groups = c["norm_num_groups"]
    if c["attn_norm_num_groups"] not in (None, groups):
        raise DiffusersFormatError(
            f"unet config attn_norm_num_groups={shown(c['attn_norm_num_groups'], 60)}; expected None or {groups}"
        )
    attn_widths = {w for w, a in zip(widths, attn_down) if a} | {widths[-1]}
    head_dim = c["attention_head_dim"]
    if head_dim is not None:  # an integer before it goes into a set: [32] is unhashable
        head_dim = _int_field("attention_head_dim", head_dim, 1, MAX_WIDTH)
    if head_dim is not None and {head_dim} != attn_widths:
        raise DiffusersFormatError(
            f"unet config attention_head_dim={head_dim!r} gives multi-head attention; the paper's U-Net has "
            f"one head (attention_head_dim null or equal to the attention width {sorted(attn_widths)})"
        )
    num_class_embeds = c["num_class_embeds"]
    if num_class_embeds is not None:  # K classes and the "no class" row K (see the module docstring)
        num_class_embeds = _int_field("num_class_embeds", num_class_embeds, 2, MAX_CLASS_EMBEDS)
    in_ch, out_ch = c["in_channels"], c["out_channels"]
    if out_ch not in (in_ch, 2 * in_ch):
        raise DiffusersFormatError(
            f"unet config out_channels={out_ch} with in_channels={in_ch}; expected {in_ch} or {2 * in_ch} "
            "(mean and learned-variance outputs)"
        )
    dropout = _number("unet config", "dropout", c["dropout"])  # UNetConfig checks its range
    try:
        return UNetConfig(
            image_size=size,
            in_channels=in_ch,
            base_channels=base,
            channel_mults=tuple(w // base for w in widths),
            num_res_blocks=int(c["layers_per_block"]),
            attn_resolutions=tuple(size // 2**i for i, a in enumerate(attn_down) if a),
            dropout=dropout,
            num_groups=int(groups),
            num_classes=None if num_class_embeds is None else num_class_embeds - 1,
        )
    except (TypeError, ValueError) as e:
        raise DiffusersFormatError(f"unet config could not be converted: {e}") from None


def _int_field(name: str, value: Any, lo: int, hi: int) -> int:
    """A config field that must be an integer in lo..hi (it sizes the network), else a DiffusersFormatError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        raise DiffusersFormatError(f"unet config {name}={shown(value, 60)}; expected an integer in {lo}..{hi}")
    return int(value)


def _number(where: str, name: str, value: Any) -> float:
    """A field that must be a finite number: JSON may hold null, "abc", a list, NaN or an integer of 400 digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DiffusersFormatError(f"{where} {name}={shown(value, 60)}; expected a number")
    try:
        x = float(value)
    except OverflowError:  # an integer beyond float's range
        x = math.inf
    if not math.isfinite(x):
        raise DiffusersFormatError(f"{where} {name}={shown(value, 60)}; expected a finite number")
    return x


def unet_config_to_diffusers(cfg: UNetConfig, out_channels: int | None = None) -> dict[str, Any]:
    """UNetConfig (with ``out_channels`` outputs, default its input channels) → a diffusers ``UNet2DModel``
    config.json dict of the same network."""
    levels = len(cfg.channel_mults)
    attn = [cfg.image_size // 2**i in cfg.attn_resolutions for i in range(levels)]
    unknown = sorted(set(cfg.attn_resolutions) - {cfg.image_size // 2**i for i in range(levels)})
    if unknown:
        raise DiffusersFormatError(
            f"attn_resolutions {unknown} are not resolutions of a {cfg.image_size}px U-Net with {levels} levels"
        )
    return {
        "_class_name": "UNet2DModel",
        "sample_size": cfg.image_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.in_channels if out_channels is None else out_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "block_out_channels": [cfg.base_channels * m for m in cfg.channel_mults],
        "layers_per_block": cfg.num_res_blocks,
        "mid_block_scale_factor": 1,
        "downsample_padding": 0,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "dropout": cfg.dropout,
        "act_fn": "silu",
        "attention_head_dim": None,
        "norm_num_groups": cfg.num_groups,
        "norm_eps": GROUPNORM_EPS,
        "resnet_time_scale_shift": "default",
        "add_attention": True,
        "class_embed_type": None,
        "num_class_embeds": None if cfg.num_classes is None else cfg.num_classes + 1,  # + the "no class" row
    }


# --- the scheduler configuration -----------------------------------------------------------------

_SCHEDULES = {"linear": "linear", "scaled_linear": "quadratic", "squaredcos_cap_v2": "cosine"}
_VARIANCES = {
    "fixed_large": "fixed_beta",
    "fixed_large_log": "fixed_beta",
    "fixed_small": "fixed_beta_tilde",
    "fixed_small_log": "fixed_beta_tilde",
    "learned_range": "learned_range",  # both: log σ² interpolates log β̃_t and log β_t by (v + 1)/2 (Nichol & Dhariwal)
}
# diffusers' "learned" reads the Σ channels as σ² itself (DDPMScheduler._get_variance returns them and step takes their
# square root); ddpm's "learned" reads them as log σ² (Table 2). The same name, two different networks: refused both
# ways, since a model of one run under the other samples from the wrong variance (NaN: the square root of a log).
_LEARNED_MISMATCH = ("diffusers' variance_type='learned' reads the network's variance channels as σ², ddpm's "
                     "var_type='learned' as log σ²")
_PREDICTIONS = {"epsilon": "eps", "sample": "x0"}
_SCHEDULER_DEFAULTS: dict[str, Any] = {  # DDPMScheduler's defaults
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "variance_type": "fixed_small",
    "prediction_type": "epsilon",
    "thresholding": False,
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "rescale_betas_zero_snr": False,
}


def diffusion_config_from_scheduler(config: dict[str, Any], extra: dict[str, Any] | None = None) -> DiffusionConfig:
    """A ``DDPMScheduler`` scheduler_config.json (+ our ``ddpm.json`` extras) → DiffusionConfig."""
    c = {**_SCHEDULER_DEFAULTS, **config}
    T = c["num_train_timesteps"]
    if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= MAX_T:
        raise DiffusersFormatError(f"scheduler config num_train_timesteps={shown(T, 60)}; expected an integer in "
                                   f"1..{MAX_T}")
    beta_start, beta_end = (_number("scheduler config", name, c[name]) for name in ("beta_start", "beta_end"))
    schedule = _SCHEDULES.get(c["beta_schedule"]) if isinstance(c["beta_schedule"], str) else None
    if c["trained_betas"] is not None:
        betas = c["trained_betas"]
        numbers_only = isinstance(betas, list) and all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                                       for b in betas)
        if not numbers_only or len(betas) != T or len(set(betas)) != 1:
            raise DiffusersFormatError(
                "scheduler config trained_betas is not supported (only a constant list of "
                f"num_train_timesteps={T} values, our 'constant' schedule)"
            )
        schedule, beta_end = "constant", _number("scheduler config", "trained_betas", betas[0])
    elif schedule is None:
        raise DiffusersFormatError(
            f"scheduler config beta_schedule={shown(c['beta_schedule'], 60)} is not supported; expected one of "
            f"{sorted(_SCHEDULES)}"
        )
    if c["variance_type"] == "learned":
        raise DiffusersFormatError(f"scheduler config variance_type='learned' is not supported: {_LEARNED_MISMATCH}")
    if not isinstance(c["variance_type"], str) or c["variance_type"] not in _VARIANCES:
        raise DiffusersFormatError(
            f"scheduler config variance_type={shown(c['variance_type'], 60)} is not supported; expected one of "
            f"{sorted(_VARIANCES)}"
        )
    if not isinstance(c["prediction_type"], str) or c["prediction_type"] not in _PREDICTIONS:
        raise DiffusersFormatError(
            f"scheduler config prediction_type={shown(c['prediction_type'], 60)} is not supported; expected one of "
            f"{sorted(_PREDICTIONS)}"
        )
    for name in ("thresholding", "rescale_betas_zero_snr"):
        if c[name]:
            raise DiffusersFormatError(f"scheduler config {name}={shown(c[name], 60)} is not supported; expected false")
    _clip_sample(c)  # checked here; load_diffusers reports it (scheduler_clips)
    var_type = _VARIANCES[c["variance_type"]]
    learned = var_type in LEARNED_VAR_TYPES
    # a learned Σ needs the bound in the loss: default to Nichol & Dhariwal's hybrid objective
    options: dict[str, Any] = {"loss_type": "hybrid" if learned else "simple"}
    ours = (extra or {}).get("diffusion", {})
    if not isinstance(ours, dict):
        raise DiffusersFormatError(f"{EXTRA_NAME} 'diffusion' must be an object of options, got {shown(ours, 60)}")
    options.update(ours)
    allowed = {"loss_type", "hybrid_lambda", "levels"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise DiffusersFormatError(f"{EXTRA_NAME} has unknown diffusion options {_names(unknown)}")
    return DiffusionConfig(
        schedule=schedule,
        T=T,
        beta_start=beta_start,
        beta_end=beta_end,
        mean_type=_PREDICTIONS[c["prediction_type"]],
        var_type=var_type,
        **options,
    )


def scheduler_clips(config: dict[str, Any]) -> bool:
    """Whether a ``DDPMScheduler`` config clips x̂₀ to [-1, 1] at each step (``clip_sample``, diffusers' default).

    ddpm's samplers clip to [-1, 1] unless told ``--no-clip``; a config clipping to another range is refused.
    """
    return _clip_sample({**_SCHEDULER_DEFAULTS, **config})


def _clip_sample(c: dict[str, Any]) -> bool:
    clip = c["clip_sample"]
    if not isinstance(clip, bool):
        raise DiffusersFormatError(f"scheduler config clip_sample={shown(clip, 60)}; expected true or false")
    if clip and _number("scheduler config", "clip_sample_range", c["clip_sample_range"]) != 1.0:
        raise DiffusersFormatError(f"scheduler config clip_sample_range={shown(c['clip_sample_range'], 60)} is not "
                                   "supported; expected 1.0 (ddpm clips x̂₀ to [-1, 1], the range of the data)")
    return clip


def diffusion_config_to_scheduler(cfg: DiffusionConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """DiffusionConfig → (a ``DDPMScheduler`` scheduler_config.json dict, our ``ddpm.json`` extras)."""
    to_schedule = {v: k for k, v in _SCHEDULES.items()}
    to_var = {
        "fixed_beta": "fixed_large",
        "fixed_beta_tilde": "fixed_small",
        "learned_range": "learned_range",
    }
    if cfg.var_type not in to_var:
        raise DiffusersFormatError(f"diffusion.var_type={cfg.var_type!r} has no diffusers equivalent: "
                                   f"{_LEARNED_MISMATCH} (DDPMScheduler would sample NaN); 'learned_range' exports")
    to_pred = {v: k for k, v in _PREDICTIONS.items()}
    if cfg.mean_type not in to_pred:
        raise DiffusersFormatError(
            f"diffusion.mean_type={cfg.mean_type!r} has no diffusers equivalent; expected 'eps' or 'x0'"
        )
    sched: dict[str, Any] = {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": cfg.T,
        "beta_start": cfg.beta_start,
        "beta_end": cfg.beta_end,
        "beta_schedule": to_schedule.get(cfg.schedule, "linear"),
        "trained_betas": [cfg.beta_end] * cfg.T if cfg.schedule == "constant" else None,
        "variance_type": to_var[cfg.var_type],
        "clip_sample": True,  # the paper's sampler clips the predicted x₀ to [-1, 1]
        "prediction_type": to_pred[cfg.mean_type],
    }
    extra = {"diffusion": {"loss_type": cfg.loss_type, "hybrid_lambda": cfg.hybrid_lambda, "levels": cfg.levels}}
    return sched, extra


# --- directories ---------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    obj = read_json(path, DiffusersFormatError)  # at most 16 MiB, nested at most 64 deep
    if not isinstance(obj, dict):
        raise DiffusersFormatError(f"{path} holds a JSON {type(obj).__name__}; expected an object")
    return obj


def _first_existing(paths: list[Path], what: str) -> Path:
    for p in paths:
        if p.is_file():
            return p
    raise FileNotFoundError(f"no {what}: looked for " + ", ".join(str(p) for p in paths))


def load_diffusers(directory: str | Path) -> DiffusersImport:
    """Read a diffusers DDPM directory (``google/ddpm-*`` layout or ours) into our configs and names."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"no diffusers directory at {root}")
    unet_dir = root / "unet" if (root / "unet" / "config.json").is_file() else root
    unet_json = _read_json(_first_existing([unet_dir / "config.json"], "unet config"))
    model_cfg = unet_config_from_diffusers(unet_json)
    weights = _first_existing([unet_dir / n for n in WEIGHT_NAMES], "unet weights")
    sched_path = _first_existing(
        [root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json"], "scheduler config"
    )
    extra = _read_json(root / EXTRA_NAME) if (root / EXTRA_NAME).is_file() else None
    sched_json = _read_json(sched_path)
    diffusion = diffusion_config_from_scheduler(sched_json, extra)
    class_names, label_dropout = _classes_from_extra(model_cfg, extra)
    out_channels = network_out_channels(model_cfg, diffusion)
    found = unet_json.get("out_channels", _UNET_DEFAULTS["out_channels"])
    if found != out_channels:
        raise DiffusersFormatError(
            f"{sched_path} has a {'learned' if diffusion.learn_sigma else 'fixed'} variance but the unet has "
            f"{found} output channels for {model_cfg.in_channels} input channels"
        )
    # every name, shape and dtype is checked against the config before a tensor is read (issue 13)
    if weights.suffix == ".safetensors":
        _check_header(read_safetensors_header(weights), model_cfg, out_channels, weights)
        state = state_dict_from_diffusers(safe_torch_load(weights), model_cfg, out_channels)
    else:  # a pickle has no header to read first: its zip records may unpack to no more than the config needs
        expected = _expected_shapes(model_cfg, out_channels)
        numel = sum(math.prod(shape) for shape in expected.values())
        raw = safe_torch_load(weights, max_bytes=8 * numel + 1024 * len(expected) + (1 << 20))  # float64 at most
        state = state_dict_from_diffusers(raw, model_cfg, out_channels)
        # an integer or float8 weight would import, then the checkpoint written would not load
        _refuse_non_floats(weights, {k: str(v.dtype).removeprefix("torch.") for k, v in raw.items()
                                     if not _is_loadable_float(v)})
    return DiffusersImport(model_cfg, diffusion, state, class_names, label_dropout, scheduler_clips(sched_json))


def _classes_from_extra(model: UNetConfig, extra: dict[str, Any] | None) -> tuple[tuple[str, ...] | None,
                                                                               float | None]:
    """(class names, label dropout) of a class-conditional import from ``ddpm.json``'s ``classes`` section."""
    section = (extra or {}).get("classes")
    K = model.num_classes
    if K is None:
        if section is not None:
            raise DiffusersFormatError(f"{EXTRA_NAME} has a 'classes' section, but the unet has no num_class_embeds")
        return None, None
    if not isinstance(section, dict) or section.get("num_classes") != K:
        raise DiffusersFormatError(
            f"unet config num_class_embeds={K + 1}: ddpm reads its last row as the 'no class' input of "
            f"classifier-free guidance, which {EXTRA_NAME} must confirm with {{\"classes\": {{\"num_classes\": "
            f"{K}}}}} (a model from elsewhere may use every row for a class)")
    unknown = set(section) - {"num_classes", "class_names", "label_dropout"}
    if unknown:
        raise DiffusersFormatError(f"{EXTRA_NAME} 'classes' has unknown fields {_names(sorted(unknown))}")
    names = section.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != K or len(set(map(str, names))) != K
                              or not all(isinstance(n, str) for n in names)):
        raise DiffusersFormatError(f"{EXTRA_NAME} 'classes.class_names' must list {K} distinct names")
    dropout = section.get("label_dropout")
    if dropout is not None and (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
                                or not 0 <= dropout <= 1):
        raise DiffusersFormatError(f"{EXTRA_NAME} 'classes.label_dropout' must be a number in [0, 1], got "
                                   f"{shown(dropout, 60)}")
    return (tuple(names) if names is not None else None), (None if dropout is None else float(dropout))


def save_diffusers(
    directory: str | Path, model_cfg: UNetConfig, diffusion_cfg: DiffusionConfig, state_dict: dict[str, Tensor],
    overwrite: bool = False, class_names: tuple[str, ...] | None = None, label_dropout: float | None = None,
) -> Path:
    """Write a ``DDPMPipeline`` directory (unet/, scheduler/, model_index.json) that diffusers loads.

    The directory is written whole beside its place (``.tmp-NAME-PID``) and renamed into it; what an earlier save
    killed mid-write left there is removed first (``remove_leftovers``). An existing non-empty ``directory`` is
    refused unless ``overwrite``, which replaces it. A class-conditional model's ``class_names`` and
    ``label_dropout`` go into ``ddpm.json`` beside its number of classes.
    """
    out_channels = network_out_channels(model_cfg, diffusion_cfg)  # a learned Σ doubles them (var_type)
    unet_json = unet_config_to_diffusers(model_cfg, out_channels)
    sched_json, extra = diffusion_config_to_scheduler(diffusion_cfg)
    if model_cfg.num_classes is not None:
        extra["classes"] = {"num_classes": model_cfg.num_classes,
                            **({"class_names": list(class_names)} if class_names is not None else {}),
                            **({"label_dropout": label_dropout} if label_dropout is not None else {})}
    tensors = {k: v.detach().to("cpu").contiguous()
               for k, v in state_dict_to_diffusers(state_dict, model_cfg, out_channels).items()}
    final = check_output_dir(directory, "convert", overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(final.parent, only_name=final.name)  # of earlier saves killed mid-write (this one's too)
    root = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)  # (a name the leftover pattern does not match)
    try:
        (root / "unet").mkdir(parents=True)
        (root / "scheduler").mkdir()
        save_safetensors(tensors, root / "unet" / WEIGHT_NAMES[0])
        index = {
            "_class_name": "DDPMPipeline",
            "scheduler": ["diffusers", "DDPMScheduler"],
            "unet": ["diffusers", "UNet2DModel"],
        }
        for path, obj in ((root / "unet" / "config.json", unet_json),
                          (root / "scheduler" / "scheduler_config.json", sched_json),
                          (root / EXTRA_NAME, extra), (root / "model_index.json", index)):
            write_text(path, json.dumps(obj, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    replace_dir(root, final)
    return final
