"""Checkpoints ↔ diffusers pipeline directories, on top of ``interop.diffusers`` and ``checkpoint``."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import save_model
from ..config import DataConfig, RunConfig, TrainConfig, UNetConfig
from ..loading import CLASS_NAMES_KEY, load_model
from .diffusers import DiffusersFormatError, DiffusersImport, load_diffusers, save_diffusers

DIFFUSERS_KEY = "diffusers"  # in the checkpoint's extra: what the source scheduler did that no config field says


def from_diffusers(directory: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Import a diffusers DDPM directory as a model-only checkpoint that ``ddpm sample``/``nll`` accept.

    The data section guesses the dataset from the shape (32×32 RGB: CIFAR-10, else an image folder); pass
    ``--data``/``--dataset`` to the evaluation commands to point them elsewhere.
    """
    return save_import(load_diffusers(directory), directory, out, overwrite)


def save_import(imp: DiffusersImport, directory: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write an imported diffusers DDPM (``load_diffusers(directory)``) as a model-only checkpoint at ``out``.

    Its extra records whether the source scheduler clipped x̂₀ (``clip_sample``), which no config field holds.
    """
    m = imp.model
    dataset = "cifar10" if (m.image_size, m.in_channels) == (32, 3) else "folder"
    train = TrainConfig() if imp.label_dropout is None else TrainConfig(label_dropout=imp.label_dropout)
    cfg = RunConfig(name=f"imported:{Path(directory).name}", model=m, diffusion=imp.diffusion,
                    data=DataConfig(dataset=dataset), train=train)
    extra: dict[str, object] = {DIFFUSERS_KEY: {"clip_sample": imp.clip_sample}}
    if imp.class_names is not None:
        extra[CLASS_NAMES_KEY] = list(imp.class_names)
    return save_model(out, cfg.to_dict(), imp.state_dict, overwrite, extra)


def to_diffusers(checkpoint: str | Path, out: str | Path, weights: str = "ema", overwrite: bool = False) -> Path:
    """Export a checkpoint's U-Net (EMA weights by default) and schedule as a DDPMPipeline directory."""
    loaded = load_model(checkpoint, weights=weights)
    if not isinstance(loaded.config.model, UNetConfig):
        raise DiffusersFormatError(f"{checkpoint} holds a {loaded.config.model.kind} model; diffusers export "
                                   "needs the U-Net")
    conditional = loaded.num_classes is not None
    return save_diffusers(out, loaded.config.model, loaded.config.diffusion, loaded.net.state_dict(), overwrite,
                          loaded.class_names, loaded.config.train.label_dropout if conditional else None)
