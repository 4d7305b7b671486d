"""Shared pieces: split checks, the fixed held-out split, and in-memory datasets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import SplitBy
from ..rng import numpy_rng, uniform_of_name
from .errors import DataError
from .levels import check_levels, from_levels

Split = Literal["train", "test"]


def check_split(split: str) -> Split:
    """Return ``split`` if it is 'train' or 'test', else raise DataError."""
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    return split  # type: ignore[return-value]


def check_image_config(image_size: int, channels: int, source: str) -> None:
    """Raise DataError naming ``source`` unless image_size >= 1 and channels is 1 or 3."""
    if channels not in (1, 3):
        raise DataError(f"{source}: images have 1 (grey) or 3 (RGB) channels; model.in_channels={channels}")
    if image_size < 1:
        raise DataError(f"{source}: model.image_size must be >= 1, got {image_size}")


def _check_fraction(n: int, split: str, held_out_fraction: float, source: str) -> None:
    check_split(split)
    if not 0.0 <= held_out_fraction < 1.0:
        raise DataError(f"{source}: data.held_out_fraction must be in [0, 1), got {held_out_fraction}")
    if held_out_fraction == 0.0 and split == "test":
        raise DataError(f"{source}: there is no test split: data.held_out_fraction is 0, so all {n} items train "
                        "(evaluate on --split train, or set --held_out_fraction)")


def _nonempty(idx: np.ndarray, n: int, split: str, held_out_fraction: float, source: str,
              why: str = "") -> np.ndarray:
    if len(idx) == 0:
        raise DataError(
            f"{source}: the {split} split is empty ({n} items, held_out_fraction={held_out_fraction}){why}"
        )
    return idx


def held_out_indices(n: int, split: str, held_out_fraction: float, split_seed: int,
                     source: str) -> np.ndarray:
    """Sorted indices of one split of ``n`` items; the test split is the first round(f*n) of a permutation.

    This is the rule of ``digits_arrays`` (data.split_by "position"); the split never changes for the same
    (n, fraction, seed) — but one item more or less reshuffles it. A fraction of 0 holds nothing out: every
    item trains (as the paper's LSUN and CelebA-HQ runs) and there is no test split.
    """
    _check_fraction(n, split, held_out_fraction, source)
    order = numpy_rng(split_seed, "split").permutation(n)
    n_test = int(round(held_out_fraction * n))
    idx = np.sort(order[:n_test] if split == "test" else order[n_test:])
    return _nonempty(idx, n, split, held_out_fraction, source)


def held_out_by_name(names: Sequence[bytes], split: str, held_out_fraction: float, split_seed: int,
                     source: str) -> np.ndarray:
    """Sorted indices of one split of the items named ``names`` (data.split_by "name"): item i is held out
    when its number ``uniform_of_name(split_seed, "split", names[i])`` is below the fraction.

    An item's split depends on its own name alone, so adding, removing or renaming other items moves none of
    the rest: a model resumed or evaluated after its folder grew still has never trained on a test image. The
    test split holds about ``f·n`` items (binomially distributed: n = 40, f = 0.1 gives 4 ± 1.9).
    """
    _check_fraction(len(names), split, held_out_fraction, source)
    test = np.fromiter((uniform_of_name(split_seed, "split", name) < held_out_fraction for name in names),
                       dtype=bool, count=len(names))
    idx = np.flatnonzero(test if split == "test" else ~test)
    return _nonempty(idx, len(names), split, held_out_fraction, source,
                     f": each item is held out by its name with probability {held_out_fraction} (data.split_by "
                     "'name'); hold out more with --held_out_fraction, or take round(fraction × items) by "
                     "position with --split_by position (one item more then reshuffles the split)")


def held_out_split(names: Sequence[bytes], split_by: SplitBy, split: str, held_out_fraction: float,
                   split_seed: int, source: str) -> np.ndarray:
    """Sorted indices of one split of the items named ``names``, by ``split_by``: each by its own name
    (``held_out_by_name``), or by their positions (``held_out_indices``, which reads only how many there are)."""
    if split_by == "name":
        return held_out_by_name(names, split, held_out_fraction, split_seed, source)
    return held_out_indices(len(names), split, held_out_fraction, split_seed, source)


class ArrayImageDataset(Dataset[Tensor]):
    """Images held in memory as uint8 levels (N, C, H, W); items are float32 (C, H, W) in [-1, 1]."""

    def __init__(self, images: np.ndarray | Tensor, levels: int, labels: np.ndarray | None = None,
                 source: str = "", class_names: tuple[str, ...] | None = None) -> None:
        self.levels = check_levels(levels)
        self.images = torch.as_tensor(np.ascontiguousarray(images), dtype=torch.uint8)
        if self.images.ndim != 4:
            raise DataError(f"{source}: expected images (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.images.numel() and int(self.images.max()) >= self.levels:
            raise DataError(f"{source}: pixel values exceed the {levels} levels")
        if labels is not None and np.shape(labels) != (self.images.shape[0],):
            raise DataError(f"{source}: {self.images.shape[0]} images but labels of shape {np.shape(labels)}")
        self.labels = labels              # (N,) class indices, or None (ddpm.data.labels)
        self.class_names = class_names    # the classes' names in index order, or None when the source has none
        self.source = source

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> Tensor:
        return from_levels(self.images[i], self.levels)

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return f"{type(self).__name__}({self.source!r}, n={n}, shape=({c}, {h}, {w}), levels={self.levels})"


class PointDataset(Dataset[Tensor]):
    """Points held in memory (N, D) float32; items are (D,) tensors."""

    labels = None
    no_labels = "2-D toy points carry no class labels"

    def __init__(self, points: Tensor, source: str = "") -> None:
        self.points = points.to(torch.float32).contiguous()
        self.source = source

    def __len__(self) -> int:
        return self.points.shape[0]

    def __getitem__(self, i: int) -> Tensor:
        return self.points[i]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, n={len(self)}, dim={self.points.shape[1]})"
