"""scikit-learn's 8x8 handwritten digits: real data shipped with that package (17 grey levels, 0..16)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..rng import numpy_rng
from .base import ArrayImageDataset, check_image_config, check_split
from .errors import DataError
from .labels import DIGITS_CLASSES
from .levels import check_levels, quantize_unit, requantize

DIGITS_LEVELS = 17  # pixel values are integers 0..16


def digits_arrays(
    split: Literal["train", "test", "all"],
    held_out_fraction: float = 0.1,
    split_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 8, 8) uint8 in 0..16 and labels (N,) of one fixed split of the 1,797 digits.

    The held-out (test) split is the first ``round(held_out_fraction * N)`` images of a permutation
    drawn from stream (split_seed, "split") of ``ddpm.rng``; it never changes for the same two arguments.
    """
    from sklearn.datasets import load_digits

    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    bunch = load_digits()
    images = bunch.images.astype(np.uint8)  # float64 0..16 in the package
    labels = bunch.target.astype(np.int64)
    order = numpy_rng(split_seed, "split").permutation(len(images))
    n_test = int(round(held_out_fraction * len(images)))
    if split == "test":
        idx = order[:n_test]
    elif split == "train":
        idx = order[n_test:]
    elif split == "all":
        idx = np.arange(len(images))
    else:
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    return images[idx], labels[idx]


def _digit_levels(images: np.ndarray, image_size: int, levels: int) -> np.ndarray:
    """Digit images (N, 8, 8) in 0..16 as (N, image_size, image_size) uint8 at ``levels`` levels."""
    if image_size == 8:
        return requantize(images, DIGITS_LEVELS, levels)
    x = torch.from_numpy(images.astype(np.float64) / (DIGITS_LEVELS - 1))[:, None]
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return quantize_unit(x[:, 0].numpy(), levels)


def digits_dataset(split: Literal["train", "test"], levels: int = DIGITS_LEVELS, image_size: int = 8,
                   channels: int = 1, held_out_fraction: float = 0.1,
                   split_seed: int = 0) -> ArrayImageDataset:
    """One fixed split of the digits as a dataset of float32 (channels, image_size, image_size) in [-1, 1].

    The digits are natively 8x8 with 17 levels: with levels=17 and image_size=8 the values are exact;
    other levels are requantized (round(k*(levels-1)/16)); another image_size resizes the 0..1 grey
    values bilinearly (antialiased) before quantizing; channels=3 repeats the grey channel.
    """
    check_image_config(image_size, channels, "digits")
    levels = check_levels(levels)
    if not 0.0 < held_out_fraction < 1.0:
        raise DataError(f"digits: data.held_out_fraction must be in (0, 1), got {held_out_fraction}")
    images, labels = digits_arrays(check_split(split), held_out_fraction, split_seed)
    grey = _digit_levels(images, image_size, levels)[:, None]
    source = f"sklearn digits ({split})"
    return ArrayImageDataset(np.repeat(grey, channels, axis=1), levels, labels, source=source,
                             class_names=DIGITS_CLASSES)
