"""scikit-learn's 8x8 handwritten digits: real data shipped with that package (17 grey levels, 0..16)."""

from __future__ import annotations

from typing import Literal

import numpy as np

DIGITS_LEVELS = 17  # pixel values are integers 0..16


def digits_arrays(
    split: Literal["train", "test", "all"],
    held_out_fraction: float = 0.1,
    split_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 8, 8) uint8 in 0..16 and labels (N,) of one fixed split of the 1,797 digits.

    The held-out (test) split is the first ``round(held_out_fraction * N)`` images of a permutation
    drawn from ``split_seed``; it never changes for the same two arguments.
    """
    from sklearn.datasets import load_digits

    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    bunch = load_digits()
    images = bunch.images.astype(np.uint8)  # float64 0..16 in the package
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(split_seed).permutation(len(images))
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
