"""ddpm.images: [-1, 1] batches and rows as 8-bit channel-last arrays, and the one PNG grid rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from _eval_tiny import png_size
from ddpm.data.levels import to_levels
from ddpm.images import save_image_grid, to_display_uint8


def _decoded(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def test_display_uint8_is_the_256_level_mapping_clipped_and_channel_last() -> None:
    x = torch.randn(5, 3, 4, 6, generator=torch.Generator().manual_seed(0)) * 1.5
    got = to_display_uint8(x)
    assert got.shape == (5, 4, 6, 3) and got.dtype == np.uint8
    assert np.array_equal(got, to_levels(x.clamp(-1, 1), 256).permute(0, 2, 3, 1).numpy())
    rows = x.reshape(1, 5, 3, 4, 6)  # rows (R, K, C, H, W) convert image by image
    assert np.array_equal(to_display_uint8(rows)[0], got)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        to_display_uint8(torch.zeros(3, 4, 4))


def test_grid_pixels_are_tiles_on_white_upscaled_by_the_one_rule(tmp_path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    grid = _decoded(save_image_grid(tmp_path / "g.png", images, nrow=3))
    canvas = np.full((2 * 9 + 1, 3 * 9 + 1), 255, np.uint8)  # 2 rows of 3 tiles, 1 px white pad
    for i, tile in enumerate(images[..., 0]):
        r, c = divmod(i, 3)
        canvas[1 + 9 * r: 9 * r + 9, 1 + 9 * c: 9 * c + 9] = tile
    assert np.array_equal(grid, np.kron(canvas, np.ones((8, 8), np.uint8)))  # 8-px tiles are shown 8× (64 px)
    side = (2 * 33 + 1) * 2  # 2 × 2 tiles of 32 px are shown 2×
    assert png_size(save_image_grid(tmp_path / "h.png", np.zeros((4, 32, 32, 3), np.uint8))) == (side, side)
    assert png_size(save_image_grid(tmp_path / "i.png", np.zeros((1, 100, 90, 3), np.uint8))) == (92, 102)  # 1×


def test_rows_are_a_grid_of_one_row_per_sample(tmp_path) -> None:
    rows = np.random.default_rng(1).integers(0, 256, (2, 3, 4, 5, 3), dtype=np.uint8)
    as_rows = save_image_grid(tmp_path / "r.png", rows, scale=2)
    flat = save_image_grid(tmp_path / "f.png", rows.reshape(6, 4, 5, 3), nrow=3, scale=2)
    assert png_size(as_rows) == ((3 * 6 + 1) * 2, (2 * 5 + 1) * 2)
    assert as_rows.read_bytes() == flat.read_bytes()
    with pytest.raises(ValueError, match="uint8"):
        save_image_grid(tmp_path / "x.png", rows.astype(np.float32))
