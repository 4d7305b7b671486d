"""Images at file boundaries: [-1, 1] float batches to 8-bit grids and PNG files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .outputs import atomic_file


def to_display_uint8(x: torch.Tensor) -> np.ndarray:
    """A batch (B, C, H, W) in [-1, 1] (values outside clipped) as uint8 (B, H, W, C) on 0..255 for viewing."""
    from .data.levels import to_uint8

    if x.ndim != 4:
        raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
    return to_uint8(x.detach().float().cpu().clamp(-1, 1), 256).permute(0, 2, 3, 1).contiguous().numpy()


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


def save_grid(path: str | Path, x: torch.Tensor, nrow: int | None = None, scale: int | None = None) -> Path:
    """Save a [-1, 1] batch as a PNG grid; small images are upscaled so a person can see them."""
    images = to_display_uint8(x)
    scale = scale or max(1, 64 // images.shape[1])
    path = Path(path)
    with atomic_file(path) as tmp:
        image_grid(images, nrow, pad=1, scale=scale).save(tmp)
    return path
