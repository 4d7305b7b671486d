"""``build_dataset``: one entry point from a ``DataConfig`` to a deterministic, eagerly validated Dataset."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from ..config import DataConfig, RunConfig
from .base import ArrayImageDataset, check_image_config, check_split
from .cifar10 import load_cifar10
from .decode import Check
from .digits import digits_dataset
from .errors import DataError
from .folder import ImageFolderDataset
from .labels import CIFAR10_CLASSES
from .levels import check_levels, requantize
from .lsun import LMDBImageDataset
from .npz import load_npz
from .toy2d import toy2d_dataset
from .transforms import fit_array_images

log = logging.getLogger(__name__)


def _array_dataset(images: np.ndarray, labels: np.ndarray | None, channels: int, size: int, levels: int,
                   source: str, class_names: tuple[str, ...] | None = None) -> ArrayImageDataset:
    """8-bit images (N, H, W, C) fitted to (channels, size, size) (channels, crop, resize) and requantized."""
    fitted = fit_array_images(images, size, channels, source)
    return ArrayImageDataset(requantize(fitted, 256, levels), levels, labels, source, class_names)


def _need_path(cfg: DataConfig, what: str) -> str:
    if cfg.path is None:
        raise DataError(f"dataset {cfg.dataset!r} needs data.path: {what}")
    return cfg.path


def dataset_for(cfg: RunConfig, split: Literal["train", "test"], *, skip_bad: bool = False,
                check: Check = "header") -> Dataset[Tensor]:
    """The ``split`` of a run's data, shaped as its model's samples, at its decoder's levels."""
    return build_dataset(cfg.data, cfg.model.sample_shape, split, cfg.diffusion.levels, skip_bad=skip_bad,
                         check=check)


def build_dataset(cfg: DataConfig, shape: tuple[int, ...], split: Literal["train", "test"], levels: int, *,
                  skip_bad: bool = False, check: Check = "header") -> Dataset[Tensor]:
    """The ``split`` of the configured source; items are float32 in [-1, 1] at ``levels`` levels.

    Images are ``shape`` = (channels, size, size), the model's ``sample_shape``; toy2d items are (2,) points
    (levels do not apply). The source is checked here, so a bad source fails before
    any training state changes. ``skip_bad`` and ``check`` apply to 'folder' and 'lmdb' (see
    ``ImageFolderDataset``).
    """
    check_split(split)
    if cfg.path is not None and cfg.dataset in ("digits", "toy2d"):
        raise DataError(f"data.path={cfg.path!r} is given, but dataset {cfg.dataset!r} is built in and reads no "
                        "path: choose the dataset kind too (--dataset folder, npz, cifar10 or lmdb)")
    if cfg.download and cfg.dataset != "cifar10":
        log.warning("data.download is ignored for dataset %r (only cifar10 downloads)", cfg.dataset)
    if cfg.dataset == "toy2d":
        if tuple(shape) != (2,):
            raise DataError(f"dataset 'toy2d' holds 2-D points, not items of shape {tuple(shape)}")
        return toy2d_dataset(split, cfg.split_seed)
    levels = check_levels(levels)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise DataError(f"dataset {cfg.dataset!r} holds square images (channels, size, size), not items of shape "
                        f"{tuple(shape)}")
    channels, size = shape[0], shape[1]
    check_image_config(size, channels, cfg.dataset)
    ds: Dataset[Tensor]
    if cfg.dataset == "digits":
        ds = digits_dataset(split, levels, size, channels, cfg.held_out_fraction, cfg.split_seed)
    elif cfg.dataset == "cifar10":
        images, labels, src = load_cifar10(cfg.path, split, cfg.download)
        ds = _array_dataset(images, labels, channels, size, levels, str(src), CIFAR10_CLASSES)
    elif cfg.dataset == "npz":
        images, labels_, names, where = load_npz(cfg.path, split, cfg.held_out_fraction, cfg.split_seed)
        ds = _array_dataset(images, labels_, channels, size, levels, where, names)
    elif cfg.dataset == "folder":
        ds = ImageFolderDataset(_need_path(cfg, "a folder of images"), size, channels, levels,
                                split, cfg.held_out_fraction, cfg.split_seed, skip_bad, check, cfg.split_rule)
    elif cfg.dataset == "lmdb":
        ds = LMDBImageDataset(_need_path(cfg, "an LMDB database folder"), size, channels,
                              levels, split, cfg.held_out_fraction, cfg.split_seed, skip_bad, check,
                              cfg.split_rule)
    else:
        raise DataError(f"unknown dataset {cfg.dataset!r}; known: digits, cifar10, folder, lmdb, npz, toy2d")
    log.info("built %r", ds)
    return ds
