"""Image files in and out of the codec: 8-bit PNGs whose values lie on the model's level grid, exactly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.folder import list_images
from ..data.levels import requantize
from ..outputs import atomic_file
from .errors import CompressionError

_MODES = {1: "L", 3: "RGB"}


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders as their image files (recursively, sorted); a missing path is an error."""
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = list_images(item)
            if not found:
                raise CompressionError(f"{item}: the folder holds no image files")
            out.extend(found)
        elif item.is_file():
            out.append(item)
        else:
            raise CompressionError(f"{item}: no such file or folder")
    if not out:
        raise CompressionError("no input images")
    return out


def read_levels(path: Path, channels: int, size: int, levels: int) -> np.ndarray:
    """One image file as integer levels (C, H, W) — refused unless it is exactly what the model codes.

    Compression is lossless, so nothing is converted: the mode must be grey ("L") for one channel or
    "RGB" for three, the size must be the model's, and every 8-bit value must be one of the model's
    levels (level k stored as round(255·k/(L−1)), as ``ddpm decompress`` writes them).
    """
    try:
        with Image.open(path) as img:
            if img.size != (size, size):  # checked on the header, before any pixel is decoded
                raise CompressionError(f"{path}: {img.size[0]}×{img.size[1]} pixels; this model codes {size}×{size}")
            img.load()
            mode, arr = img.mode, np.asarray(img)
    except CompressionError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise CompressionError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from e
    if mode != _MODES[channels]:
        raise CompressionError(f"{path}: image mode {mode!r}; this model codes {channels}-channel images "
                               f"(mode {_MODES[channels]!r}), and converting would not be lossless")
    k = requantize(arr, 256, levels)
    if not np.array_equal(requantize(k, levels, 256), arr):
        bad = arr[requantize(k, levels, 256) != arr]
        raise CompressionError(f"{path}: pixel values such as {int(bad[0])} are not on the model's {levels}-level "
                               f"grid (round(255·k/{levels - 1})); requantize the image first")
    return k[None] if channels == 1 else np.ascontiguousarray(k.transpose(2, 0, 1))


def read_images(paths: Sequence[Path], channels: int, size: int, levels: int) -> np.ndarray:
    """Image files as (N, C, H, W) integer levels."""
    return np.stack([read_levels(p, channels, size, levels) for p in paths])


def write_images(out_dir: Path, images: np.ndarray, levels: int) -> list[Path]:
    """(N, C, H, W) levels as 8-bit PNGs 000000.png, 000001.png, … (in the order they were compressed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, k in enumerate(images):
        arr = requantize(k, levels, 256)
        img = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0), mode=None)
        path = out_dir / f"{i:06d}.png"
        with atomic_file(path) as tmp:
            img.save(tmp)
        paths.append(path)
    return paths
