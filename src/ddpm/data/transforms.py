"""Image transforms: the trainer's random flip, channel conversion, center crop and resize."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .errors import DataError

RESAMPLE = Image.Resampling.BICUBIC  # PIL's resize filters are antialiased when they shrink


def random_flip(x: Tensor, generator: torch.Generator, batch_size: int | None = None,
                share: slice | None = None) -> Tensor:
    """Flip each image of a batch (B, C, H, W) horizontally with probability 1/2, drawn from ``generator``.

    ``x`` may be the ``share`` of a global batch of ``batch_size`` images: the coins are drawn for the whole
    batch and sliced, so every process of a DDP run flips the images one process would.
    """
    if x.ndim != 4:
        raise ValueError(f"random_flip expects a batch of images (B, C, H, W), got shape {tuple(x.shape)}")
    coins = torch.rand(x.shape[0] if batch_size is None else batch_size, generator=generator,
                       device=generator.device) < 0.5
    if share is not None:
        coins = coins[share]
    return torch.where(coins.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) as uint8 grey (...), bit-exact with PIL's ``convert("L")`` (ITU-R 601-2 luma)."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 images (N, H, W, C) with C in {1, 3} as (N, H, W, channels): grey is repeated, RGB made luma."""
    c = images.shape[-1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    if c == 3 and channels == 1:
        return rgb_to_grey(images)[..., None]
    raise ValueError(f"cannot convert {c} channels to {channels}")


def center_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of the largest centered square."""
    s = min(width, height)
    left, top = (width - s) // 2, (height - s) // 2
    return left, top, left + s, top + s


def fit_square(img: Image.Image, size: int) -> Image.Image:
    """Center-crop ``img`` to a square and resize it to size x size (bicubic, antialiased)."""
    box = center_crop_box(*img.size)
    if box != (0, 0, *img.size):
        img = img.crop(box)  # crop first: resize(box=...) would let the filter see pixels outside the box
    return img if img.size == (size, size) else img.resize((size, size), RESAMPLE)


def check_min_size(height: int, width: int, size: int, where: str) -> None:
    """Raise DataError naming ``where`` if an image of height x width is too small to give size x size."""
    if min(height, width) < size:
        raise DataError(
            f"{where}: image of {width}x{height} pixels is smaller than image_size={size} "
            "(images are center-cropped and resized down, never up)"
        )


def fit_array_images(images: np.ndarray, size: int, channels: int, where: str) -> np.ndarray:
    """uint8 images (N, H, W, C) as (N, channels, size, size): channels converted, center-cropped, resized."""
    n, h, w, _ = images.shape
    check_min_size(h, w, size, where)
    images = convert_channels(images, channels)
    if (h, w) != (size, size):
        out = np.empty((n, size, size, channels), dtype=np.uint8)
        for i in range(n):
            img = Image.fromarray(images[i, ..., 0] if channels == 1 else images[i])
            out[i] = np.asarray(fit_square(img, size)).reshape(size, size, channels)
        images = out
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
