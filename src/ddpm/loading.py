"""A trained (or converted) model ready to sample and evaluate: network, diffusion and config from a checkpoint.

A checkpoint comes from anyone, and its JSON config decides what a network costs (``base_channels`` 10⁶ asks for
terabytes). So nothing is allocated from the config alone: the network is built on torch's meta device (shapes,
no memory), every name, shape and dtype is compared with the safetensors headers, and only a network that fits
the files is materialized — it then costs no more than the tensor files hold.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from .checkpoint import FILES, META, CheckpointError, inspect_checkpoint, load_checkpoint
from .config import MAX_IMAGE_SIZE, ConfigError, MLPConfig, ModelConfig, RunConfig, UNetConfig
from .diffusion import GaussianDiffusion
from .nets import network_for
from .nets.precision import in_bfloat16

Shapes = Mapping[str, tuple[int, ...]]
Weights = Literal["ema", "model"]  # the EMA weights (what the paper evaluates) or the raw ones
WEIGHT_DTYPES = {"F16", "BF16", "F32", "F64"}  # safetensors dtype names a float32 network can load
_SHOWN = 5  # problems listed per kind in an error message (one line, however many there are)
CLASS_NAMES_KEY = "class_names"  # a class-conditional checkpoint's class names, in its extra metadata


@dataclass
class LoadedModel:
    """A network in eval mode, its diffusion and the run config it was trained with."""

    net: nn.Module
    diffusion: GaussianDiffusion
    config: RunConfig
    step: int
    weights: str  # "ema" or "model"
    bf16: bool = False  # run the network (only) under bfloat16 autocast
    class_names: tuple[str, ...] | None = None  # a class-conditional model's K names, if its checkpoint has them

    def __call__(self, x_t: torch.Tensor, steps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The network's output; ``y`` (B,) are class labels of a class-conditional model (None: no class)."""
        if self.num_classes is not None and not self.null_class_trained:
            if y is None or bool((y == self.num_classes).any()):
                raise ConfigError("this model was trained with train.label_dropout=0, so its 'no class' input never "
                                  "learned p(x): unconditional samples and guidance are meaningless; sample a class "
                                  "unguided (ddpm sample --class K --guidance 0) — what draws without a class "
                                  "(progressive, interpolate) cannot use this model")
        net = in_bfloat16(self.net) if self.bf16 else self.net
        return net(x_t, steps) if y is None else net(x_t, steps, y=y)

    @property
    def num_classes(self) -> int | None:
        """K of a class-conditional model (its "no class" input is index K), None for an unconditional one."""
        return self.config.model.num_classes

    @property
    def null_class_trained(self) -> bool:
        """Whether label dropout trained the "no class" input, i.e. whether the model knows p(x) too."""
        return self.config.train.label_dropout > 0

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample: (C, H, W) for an image model, (D,) for a point model."""
        return self.config.model.sample_shape


def load_model(path: str | Path, weights: Weights = "ema", device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint directory (or a run directory's latest) for sampling; ``weights`` is "ema" or "model".

    The EMA weights are what the paper evaluates; a model-only checkpoint (e.g. converted official weights,
    which are EMA weights already) has just one set, used for either choice.
    """
    if weights not in get_args(Weights):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    info = inspect_checkpoint(path)  # meta.json and the headers: bounded reads, no tensor
    try:
        cfg = RunConfig.from_dict(info.config)  # validates every field, e.g. diffusion.T <= MAX_T
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{info.path / META}: {e}") from None
    _check_activation_sizes(cfg, info.path / META)
    used = "ema" if weights == "ema" and "ema" in info.tensors else "model"
    file = info.path / FILES[used]
    header = info.tensors[used]
    bad = sorted(k for k, (dtype, _) in header.items() if dtype not in WEIGHT_DTYPES)
    if bad:
        raise CheckpointError(f"{file} holds non-float tensors {listed(bad)} (dtype {header[bad[0]][0]}); "
                              "network weights are floats")
    net = meta_network(cfg, {k: shape for k, (_, shape) in header.items()}, str(file))
    ckpt = load_checkpoint(info.path)  # hashes verified; tensors are what the files hold
    state = ckpt.ema if used == "ema" else ckpt.model
    assert state is not None  # "ema" is used only when the checkpoint lists ema.safetensors
    net = materialize(cfg, net, state, str(file), device)
    names = stored_class_names(ckpt.extra, cfg, info.path / META)
    return LoadedModel(net.eval(), GaussianDiffusion.from_config(cfg.diffusion), cfg, ckpt.step, used,
                       class_names=names)


def stored_class_names(extra: Mapping[str, Any], cfg: RunConfig, where: Path) -> tuple[str, ...] | None:
    """The class names a checkpoint's extra metadata holds (None if none: classes are then "0".."K−1")."""
    K = cfg.model.num_classes
    names = extra.get(CLASS_NAMES_KEY)
    if K is None:
        if names is not None:
            raise CheckpointError(f"{where}: class names are stored, but model.num_classes is None")
        return None
    if names is None:
        return None
    if not isinstance(names, list) or len(names) != K or not all(isinstance(n, str) for n in names) \
            or len(set(names)) != K:
        raise CheckpointError(f"{where}: extra.{CLASS_NAMES_KEY} must list model.num_classes={K} distinct names")
    return tuple(names)


def _check_activation_sizes(cfg: RunConfig, where: Path) -> None:
    """Fields that size samples and activations but no weight, so the header comparison cannot catch them."""
    sizes = [("model.image_size", cfg.model.image_size, MAX_IMAGE_SIZE)] if isinstance(cfg.model, UNetConfig) else []
    sizes += [("diffusion.levels", cfg.diffusion.levels, 256)]
    for name, value, hi in sizes:
        if value > hi:  # levels: pixels are uint8 (ddpm.data.levels); image size: see MAX_IMAGE_SIZE
            raise CheckpointError(f"{where}: {name} must be at most {hi}, got {value}")


def meta_network(cfg: RunConfig, shapes: Shapes, what: str) -> nn.Module:
    """The network of run ``cfg``, on the meta device, checked against ``shapes`` (name -> shape) of ``what``.

    Building on meta allocates no tensor memory, but each parameter is still a Python object: the build is
    stopped once it registers far more tensors than ``shapes`` holds (num_res_blocks 10⁷ would otherwise take
    minutes and gigabytes before any comparison). Any difference is one CheckpointError listing them.
    """
    limit = 2 * len(shapes) + 64  # slack for a module that registers a name twice; the exact check follows
    least = _least_tensors(cfg.model)
    if least > limit:  # before building: the U-Net's constructor makes lists of num_res_blocks entries
        raise CheckpointError(f"{what} does not fit the network its config describes: the config asks for at "
                              f"least {least} tensors, the file holds {len(shapes)}")
    try:
        with tensor_budget(limit, what, len(shapes)), torch.device("meta"):
            net = network_for(cfg)
    except (ValueError, TypeError, RuntimeError) as e:  # e.g. GroupNorm groups that do not divide the channels
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{what}: its config describes no buildable network ({type(e).__name__}: {e})") \
            from None
    problems = shape_problems({k: tuple(v.shape) for k, v in net.state_dict().items()}, shapes)
    if problems:
        raise CheckpointError(f"{what} does not fit the network its config describes: {problems}")
    return net


def materialize(cfg: RunConfig, net: nn.Module, state: Mapping[str, torch.Tensor], what: str,
                device: str | torch.device = "cpu") -> nn.Module:
    """``net`` (``cfg`` built by ``meta_network``) allocated on ``device`` and filled from ``state``."""
    persistent = set(net.state_dict())
    everything = {n for n, _ in net.named_parameters()} | {n for n, _ in net.named_buffers()}
    if everything - persistent:  # a non-persistent buffer is not in the file: build for real to compute it
        with torch.device(device):
            net = network_for(cfg)
    else:
        net = net.to_empty(device=device)  # uninitialized: every tensor is overwritten just below
    try:
        net.load_state_dict(dict(state), strict=True)
    except RuntimeError as e:  # the files changed since their headers were read
        raise CheckpointError(f"{what} does not fit the network its config describes: {_first_line(e)}") from None
    return net


def shape_problems(expected: Shapes, found: Shapes) -> str:
    """'' when the names and shapes agree; else one line naming the missing, unexpected and mis-shaped ones."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(f"{k} {tuple(found[k])} where the config gives {tuple(expected[k])}"
                        for k in set(expected) & set(found) if tuple(found[k]) != tuple(expected[k]))
    parts = [f"{title} {listed(items)}" for title, items in
             (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if items]
    return "; ".join(parts)


def _least_tensors(cfg: ModelConfig) -> int:
    """A lower bound on the tensors of ``cfg``'s network, from its counts alone (a weight and a bias per block)."""
    if isinstance(cfg, UNetConfig):  # residual blocks: num_res_blocks per level down, one more up, two in the middle
        return 2 * (len(cfg.channel_mults) * (2 * cfg.num_res_blocks + 1) + 2)
    if isinstance(cfg, MLPConfig):
        return 2 * cfg.depth
    return 0


@contextmanager
def tensor_budget(limit: int, what: str, held: int, error: type[CheckpointError] = CheckpointError) -> Iterator[None]:
    """Raise ``error`` once this thread registers more than ``limit`` parameters and buffers (``held``: the file's)."""
    count, me = 0, threading.get_ident()

    def hook(module: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
        nonlocal count
        if tensor is None or threading.get_ident() != me:
            return
        count += 1
        if count > limit:
            raise error(f"{what} does not fit the network its config describes: the config asks for "
                                  f"more than {limit} tensors, the file holds {held}")

    handles = [torch.nn.modules.module.register_module_parameter_registration_hook(hook),
               torch.nn.modules.module.register_module_buffer_registration_hook(hook)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def listed(items: list[str]) -> str:
    """'(3): a, b, c' — at most _SHOWN of them, so that a crafted file still makes one short line."""
    shown = ", ".join(items[:_SHOWN]) + (f", … ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")
    return f"({len(items)}): {shown}"


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__
