"""Images at file boundaries: [-1, 1] float batches as 8-bit arrays for files and figures, and PNG grids of them.

The mapping between [-1, 1] and integer levels (level k of L is 2k/(L−1) − 1) is ``ddpm.data.levels``
(``to_levels``, ``from_levels``); an 8-bit file is its L = 256 case. This module adds only what files and
figures need beyond it: the channel-last layout, clipping for display, and one grid rule for every PNG.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data.levels import to_levels
from .outputs import atomic_file

DISPLAY_PX = 64  # small images are upscaled (by an integer) until a tile is about this many pixels high


def to_display_uint8(x: torch.Tensor) -> np.ndarray:
    """Images (B, C, H, W) or rows (R, K, C, H, W) in [-1, 1] (outside clipped) as uint8 (…, H, W, C) on 0..255."""
    if x.ndim not in (4, 5):
        raise ValueError(f"expected images (B, C, H, W) or rows (R, K, C, H, W), got shape {tuple(x.shape)}")
    return to_levels(x.detach().float().cpu().clamp(-1, 1), 256).movedim(-3, -1).contiguous().numpy()


def image_grid(images: np.ndarray, nrow: int | None = None, pad: int = 1, scale: int = 1) -> Image.Image:
    """uint8 images (B, H, W, C) tiled into one PIL image, ``nrow`` per row, each upscaled ``scale``×."""
    B, H, W, C = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(B)))
    rows = math.ceil(B / nrow)
    canvas = np.full((rows * (H + pad) + pad, nrow * (W + pad) + pad, C), 255, dtype=np.uint8)
    for i in range(B):
        r, c = divmod(i, nrow)
        canvas[pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = images[i]
    img = Image.fromarray(canvas[..., 0] if C == 1 else canvas)
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST) if scale > 1 else img


def save_image_grid(path: str | Path, images: np.ndarray, nrow: int | None = None, pad: int = 1,
                    scale: int | None = None) -> Path:
    """uint8 images (B, H, W, C) as a PNG grid (default: square), or rows (R, K, H, W, C) as R rows of K.

    ``scale`` defaults to the integer upscaling that makes a tile about ``DISPLAY_PX`` pixels high.
    """
    if images.dtype != np.uint8 or images.ndim not in (4, 5):
        raise ValueError(f"expected uint8 images (B, H, W, C) or rows (R, K, H, W, C), got {images.dtype} "
                         f"{images.shape}")
    if images.ndim == 5:  # Figs. 6-8: one row per sample or pair
        images, nrow = images.reshape(-1, *images.shape[2:]), images.shape[1]
    scale = scale or max(1, DISPLAY_PX // max(images.shape[1], 1))
    path = Path(path)
    with atomic_file(path) as tmp:
        image_grid(images, nrow, pad, scale).save(tmp)
    return path
