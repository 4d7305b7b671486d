"""Built-in sources through build_dataset: scikit-learn digits and the 2-D toy mixture."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from ddpm.config import DataConfig, preset
from ddpm.data import (
    DIGITS_LEVELS,
    TOY2D_SIZES,
    DataError,
    build_dataset,
    digits_arrays,
    toy2d_centers,
    toy2d_log_prob,
    toy2d_sample,
)

DIGITS = preset("digits").data
GREY8 = preset("digits").model.sample_shape  # (1, 8, 8)


def test_digits_at_17_levels_are_exact() -> None:
    train, test = build_dataset(DIGITS, GREY8, "train", 17), build_dataset(DIGITS, GREY8, "test", 17)
    assert (len(train), len(test)) == (1617, 180)
    images, labels = digits_arrays("train", DIGITS.held_out_fraction, DIGITS.split_seed)
    for i in (0, 100, 1616):
        x = train[i]
        assert x.shape == (1, 8, 8) and x.dtype == torch.float32
        assert np.array_equal(x[0].numpy(), (2 * images[i].astype(int) / 16 - 1).astype(np.float32))
    assert np.array_equal(train.labels, labels)  # type: ignore[attr-defined]
    all_images = digits_arrays("all")[0].reshape(1797, -1)
    stored = torch.cat([train.images, test.images]).reshape(1797, -1).numpy()  # type: ignore[attr-defined]
    assert sorted(map(bytes, stored)) == sorted(map(bytes, all_images))  # a partition of the 1,797 digits


def test_digits_other_levels_sizes_and_channels() -> None:
    images, _ = digits_arrays("test", 0.1, 0)
    x = build_dataset(DIGITS, GREY8, "test", 256)[0]
    k = (2 * images[0].astype(int) * 255 + 16) // 32
    assert np.array_equal(x[0].numpy(), (2 * k / 255 - 1).astype(np.float32))
    rgb = build_dataset(DIGITS, (3, 16, 16), "test", DIGITS_LEVELS)[0]
    assert rgb.shape == (3, 16, 16)
    assert torch.equal(rgb[0], rgb[2])
    assert set(torch.unique(rgb * 8 + 8).round().tolist()) <= set(range(17))
    with pytest.raises(DataError, match="channels"):
        build_dataset(DIGITS, (2, 8, 8), "train", 17)
    with pytest.raises(DataError, match="held_out_fraction"):
        build_dataset(replace(DIGITS, held_out_fraction=0.0), GREY8, "train", 17)


def test_digits_split_follows_the_seed() -> None:
    a = build_dataset(replace(DIGITS, split_seed=1), GREY8, "test", 17)
    b = build_dataset(DIGITS, GREY8, "test", 17)
    assert not torch.equal(a.images, b.images)  # type: ignore[attr-defined]


def test_toy2d_fixed_splits() -> None:
    cfg = preset("toy2d").data
    train, test = build_dataset(cfg, (2,), "train", 256), build_dataset(cfg, (2,), "test", 256)
    assert (len(train), len(test)) == (TOY2D_SIZES["train"], TOY2D_SIZES["test"]) == (20_000, 5_000)
    assert train[0].shape == (2,) and train[0].dtype == torch.float32
    again = build_dataset(cfg, (2,), "train", 17)
    assert torch.equal(again.points, train.points)  # type: ignore[attr-defined]
    assert not torch.equal(train.points[:5000], test.points)  # type: ignore[attr-defined]
    other = build_dataset(replace(cfg, split_seed=3), (2,), "train", 256)
    assert not torch.equal(other.points, train.points)  # type: ignore[attr-defined]


def test_toy2d_distribution() -> None:
    x = toy2d_sample(40_000, torch.Generator().manual_seed(0))
    assert x.shape == (40_000, 2)
    assert (x.abs() <= 1).float().mean() > 0.999
    nearest = torch.cdist(x, toy2d_centers()).argmin(1)
    counts = torch.bincount(nearest, minlength=8).float()
    assert torch.all((counts / 40_000 - 1 / 8).abs() < 0.01)
    resid = x - toy2d_centers()[nearest]
    assert abs(resid.std().item() - 0.05) < 0.002
    assert torch.equal(x, toy2d_sample(40_000, torch.Generator().manual_seed(0)))


def test_toy2d_log_prob_is_a_density() -> None:
    g = torch.linspace(-1.2, 1.2, 481, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    cell = (g[1] - g[0]) ** 2
    assert abs((toy2d_log_prob(grid).exp().sum() * cell).item() - 1) < 1e-3
    peak = toy2d_log_prob(toy2d_centers()[:1].double()).item()
    assert peak == pytest.approx(-math.log(8) - math.log(2 * math.pi * 0.05**2), abs=1e-6)


def test_build_dataset_rejects_bad_arguments() -> None:
    with pytest.raises(DataError, match="split"):
        build_dataset(DIGITS, GREY8, "validation", 17)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="levels"):
        build_dataset(DIGITS, GREY8, "train", 300)
    with pytest.raises(DataError, match="needs data.path"):
        build_dataset(DataConfig(dataset="lmdb"), (3, 8, 8), "train", 256)
    with pytest.raises(DataError, match="square images"):
        build_dataset(DIGITS, (2,), "train", 17)
    with pytest.raises(DataError, match="2-D points"):
        build_dataset(preset("toy2d").data, (1, 8, 8), "train", 17)
