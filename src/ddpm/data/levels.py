"""The [-1, 1] <-> integer pixel level mapping: level k of L levels is 2k/(L-1) - 1."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .errors import DataError


def check_levels(levels: int) -> int:
    """Return ``levels`` if it is an int in 2..256 (levels must fit in uint8), else raise DataError."""
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or not 2 <= levels <= 256:
        raise DataError(f"levels must be an integer in 2..256 (pixels are stored as uint8), got {levels!r}")
    return int(levels)


def from_levels(k: Tensor | np.ndarray, levels: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Integer levels 0..levels-1 as values 2k/(levels-1) - 1 in [-1, 1] of ``dtype`` (correctly rounded)."""
    levels = check_levels(levels)
    t = torch.from_numpy(np.asarray(k, dtype=np.float64)) if isinstance(k, np.ndarray) else torch.as_tensor(k)
    t = t.to(dtype)  # integers below 2**24: exact in float32 as in float64
    return (2 * t - (levels - 1)) / (levels - 1)  # exact integers, then one IEEE division: no double rounding


def to_levels(x: Tensor, levels: int) -> Tensor:
    """Values in [-1, 1] as uint8 levels round((x+1)/2 * (levels-1)), clamped to 0..levels-1."""
    levels = check_levels(levels)
    if not torch.isfinite(x).all():
        raise ValueError("to_levels: the input holds NaN or infinite values")
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    k = torch.round((x + 1.0) * ((levels - 1) / 2.0))
    return k.clamp_(0, levels - 1).to(torch.uint8)


def requantize(k: np.ndarray, from_levels: int, to_levels: int) -> np.ndarray:
    """Levels 0..from_levels-1 as the nearest of to_levels levels: round(k*(to-1)/(from-1)), halves up."""
    from_levels, to_levels = check_levels(from_levels), check_levels(to_levels)
    if from_levels == to_levels:
        return np.asarray(k, dtype=np.uint8)
    k64 = np.asarray(k, dtype=np.int64)
    return ((2 * k64 * (to_levels - 1) + (from_levels - 1)) // (2 * (from_levels - 1))).astype(np.uint8)


def quantize_unit(v: np.ndarray, levels: int) -> np.ndarray:
    """Values in [0, 1] as the nearest of ``levels`` levels (halves up, clipped), uint8."""
    levels = check_levels(levels)
    k = np.floor(np.asarray(v, dtype=np.float64) * (levels - 1) + 0.5)
    return np.clip(k, 0, levels - 1).astype(np.uint8)
