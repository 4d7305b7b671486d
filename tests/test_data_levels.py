"""Level mapping, requantization, random flips, the held-out split and array transforms of ddpm.data."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ddpm.data import DataError, from_levels, held_out_indices, random_flip, requantize, to_levels
from ddpm.data.transforms import fit_array_images, rgb_to_grey

levels_st = st.integers(2, 256)


@given(levels_st, st.data())
def test_level_round_trip_is_exact(levels: int, data: st.DataObject) -> None:
    ks = data.draw(st.lists(st.integers(0, levels - 1), min_size=1, max_size=20))
    k = torch.tensor(ks, dtype=torch.uint8)
    x = from_levels(k, levels)
    assert x.dtype == torch.float32
    expected = np.array([2 * v / (levels - 1) - 1 for v in ks], dtype=np.float32)
    assert np.array_equal(x.numpy(), expected)
    assert torch.equal(to_levels(x, levels), k)


@given(levels_st, st.lists(st.floats(-1, 1), min_size=1, max_size=20))
def test_to_levels_picks_the_nearest_level(levels: int, xs: list[float]) -> None:
    x = torch.tensor(xs, dtype=torch.float64)
    back = from_levels(to_levels(x, levels), levels).double()
    assert (back - x).abs().max() <= 1.0 / (levels - 1) + 1e-6


def test_endpoints_and_clamping() -> None:
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 5.0])
    assert to_levels(x, 256).tolist() == [0, 0, 128, 255, 255]  # 127.5 rounds to even 128
    assert to_levels(x, 17).tolist() == [0, 0, 8, 16, 16]
    assert from_levels(np.array([0, 8, 16]), 17).tolist() == [-1.0, 0.0, 1.0]


def test_float64_levels_are_the_float64_formula() -> None:
    """The codec computes on float64 level values; they must be the one-division formula to the bit."""
    for levels in range(2, 257):
        k = np.arange(levels)
        want = (2.0 * k - (levels - 1)) / (levels - 1)
        got = from_levels(k, levels, torch.float64)
        assert got.dtype == torch.float64 and np.array_equal(got.numpy(), want)
        assert torch.equal(from_levels(k, levels), torch.from_numpy(want.astype(np.float32)))  # float32: one rounding


def test_bad_levels_and_nonfinite_are_refused() -> None:
    for bad in (1, 257, 2.5, True):
        with pytest.raises(DataError, match="levels"):
            from_levels(torch.zeros(1), bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        to_levels(torch.tensor([0.0, float("nan")]), 256)


@given(levels_st)
def test_requantize_matches_rounding_half_up(levels: int) -> None:
    v = np.arange(256, dtype=np.uint8)
    got = requantize(v, 256, levels)
    want = [int(Fraction(int(a) * (levels - 1), 255) + Fraction(1, 2)) for a in v]  # floor(x + 1/2)
    assert got.tolist() == want
    assert got[0] == 0 and got[-1] == levels - 1
    assert np.all(np.diff(got.astype(int)) >= 0)


def test_requantize_is_identity_at_the_same_levels() -> None:
    v = np.arange(17, dtype=np.uint8)
    assert np.array_equal(requantize(v, 17, 17), v)
    assert requantize(v, 17, 256).tolist() == [round(k * 255 / 16 + 1e-9) for k in range(17)]


def test_random_flip_flips_whole_images() -> None:
    x = torch.randn(256, 3, 4, 5)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, torch.flip(xi, dims=[-1])) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert torch.all(flipped ^ kept)
    assert 90 < int(flipped.sum()) < 166  # Binomial(256, 1/2): mean 128, sd 8
    again = random_flip(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    other = random_flip(x, torch.Generator().manual_seed(1))
    assert not torch.equal(out, other)


def test_random_flip_needs_a_batch() -> None:
    with pytest.raises(ValueError, match="B, C, H, W"):
        random_flip(torch.zeros(3, 4, 4), torch.Generator())


@settings(max_examples=30)
@given(st.integers(1, 500), st.floats(0.01, 0.99), st.integers(0, 2**31))
def test_held_out_split_is_a_fixed_partition(n: int, frac: float, seed: int) -> None:
    n_test = int(round(frac * n))
    if n_test in (0, n):
        split = "test" if n_test == 0 else "train"
        with pytest.raises(DataError, match="empty"):
            held_out_indices(n, split, frac, seed, "src")
        return
    train = held_out_indices(n, "train", frac, seed, "src")
    test = held_out_indices(n, "test", frac, seed, "src")
    assert len(test) == n_test
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(n))
    assert np.array_equal(train, held_out_indices(n, "train", frac, seed, "src"))


def test_held_out_split_checks_its_arguments() -> None:
    for bad in (-0.1, 1.0):
        with pytest.raises(DataError, match=r"held_out_fraction must be in \[0, 1\)"):
            held_out_indices(10, "train", bad, 0, "src")
    assert held_out_indices(10, "train", 0.0, 0, "src").tolist() == list(range(10))  # 0: every item trains
    with pytest.raises(DataError, match="there is no test split"):
        held_out_indices(10, "test", 0.0, 0, "src")
    with pytest.raises(DataError, match="split"):
        held_out_indices(10, "val", 0.5, 0, "src")


def test_grey_conversion_matches_pil() -> None:
    a = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.array_equal(rgb_to_grey(a), np.asarray(Image.fromarray(a).convert("L")))


def test_fit_array_images_crops_the_center_and_refuses_upscaling() -> None:
    a = np.zeros((2, 8, 12, 3), dtype=np.uint8)
    a[:, :, 2:10] = 200  # the centered 8x8 square
    out = fit_array_images(a, 8, 3, "arr")
    assert out.shape == (2, 3, 8, 8) and np.all(out == 200)
    assert fit_array_images(a, 4, 1, "arr").shape == (2, 1, 4, 4)
    with pytest.raises(DataError, match="arr.*smaller than image_size=9"):
        fit_array_images(a, 9, 3, "arr")
