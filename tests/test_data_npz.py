""".npz sources: layouts, own or held-out split, exact values, and errors naming the file and key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm.config import DataConfig
from ddpm.data import DataError, build_dataset


def cfg(path: Path, channels: int = 3, image_size: int = 8, **kw: object) -> tuple[DataConfig, tuple[int, ...]]:
    """The data section and the sample shape (channels, size, size) a model would ask for."""
    base = {"dataset": "npz", "path": str(path), "held_out_fraction": 0.2}
    return DataConfig(**{**base, **kw}), (channels, image_size, image_size)  # type: ignore[arg-type]


def images(n: int = 10, shape: tuple[int, ...] = (8, 8, 3), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nhw", "single_other_key"])
def test_layouts_give_exact_values(tmp_path: Path, layout: str) -> None:
    a = images()  # (N, H, W, C)
    stored = {"nhwc": a, "nchw": a.transpose(0, 3, 1, 2), "nhw": a[..., 0], "single_other_key": a}[layout]
    path = tmp_path / "d.npz"
    np.savez(path, **({"arr_0": stored} if layout == "single_other_key" else {"images": stored}))
    channels = 1 if layout == "nhw" else 3
    train = build_dataset(*cfg(path, channels=channels), "train", 256)
    test = build_dataset(*cfg(path, channels=channels), "test", 256)
    assert (len(train), len(test)) == (8, 2)
    got = torch.stack([train[i] for i in range(8)] + [test[i] for i in range(2)])
    want = a.transpose(0, 3, 1, 2)[:, :channels]
    order = np.argsort(np.concatenate([np.arange(10)[np.isin(np.arange(10), _split(10, "train"))],
                                       _split(10, "test")]))
    assert np.array_equal(got.numpy()[order], (2 * want.astype(int) / 255 - 1).astype(np.float32))


def _split(n: int, split: str) -> np.ndarray:
    from ddpm.data import held_out_indices

    return held_out_indices(n, split, 0.2, 0, "x")


def test_own_split_labels_and_levels(tmp_path: Path) -> None:
    tr, te = images(6), images(3, seed=1)
    path = tmp_path / "own.npz"
    np.savez(path, train_images=tr, test_images=te, train_labels=np.arange(6), test_labels=np.arange(3) + 10)
    train, test = build_dataset(*cfg(path), "train", 17), build_dataset(*cfg(path), "test", 17)
    assert (len(train), len(test)) == (6, 3)
    assert test.labels.tolist() == [10, 11, 12]  # type: ignore[attr-defined]
    k = (2 * te[1].astype(int) * 16 + 255) // 510
    assert np.array_equal(test[1].numpy(), (2 * k.transpose(2, 0, 1) / 16 - 1).astype(np.float32))


def test_resize_and_grey(tmp_path: Path) -> None:
    path = tmp_path / "big.npz"
    np.savez(path, images=np.full((5, 20, 30, 3), 90, dtype=np.uint8))
    x = build_dataset(*cfg(path, channels=1), "train", 256)[0]
    assert x.shape == (1, 8, 8) and torch.all(x == np.float32(2 * 90 / 255 - 1))


@pytest.mark.parametrize("content, match", [
    ({"images": np.zeros((4, 8, 8, 3), np.float32)}, r"key 'images'.*uint8.*float32"),
    ({"images": np.zeros((4, 8, 8, 4), np.uint8)}, r"key 'images'.*channels"),
    ({"images": np.zeros((4, 8), np.uint8)}, r"key 'images'.*shape \(4, 8\)"),
    ({"images": np.zeros((0, 8, 8), np.uint8)}, r"key 'images'.*empty"),
    ({"images": np.zeros((4, 5, 5, 3), np.uint8)}, r"key 'images'.*smaller than image_size=8"),
    ({"a": np.zeros((4, 8, 8), np.uint8), "b": np.zeros(3)}, r"no 'images' key.*\['a', 'b'\]"),
    ({"train_images": np.zeros((4, 8, 8), np.uint8)}, r"only one of 'train_images'"),
    ({"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": np.zeros(3, int)}, r"key 'labels'.*4 integer"),
    ({"images": np.array([None] * 4, dtype=object)}, r"cannot read"),
])
def test_bad_content_names_file_and_key(tmp_path: Path, content: dict[str, np.ndarray], match: str) -> None:
    path = tmp_path / "bad_file.npz"
    np.savez(path, **content)
    with pytest.raises(DataError, match=rf"bad_file\.npz.*{match}"):
        build_dataset(*cfg(path), "train", 256)


def test_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=r"junk\.npz.*cannot read"):
        build_dataset(*cfg(tmp_path / "junk.npz"), "train", 256)
    np.save(tmp_path / "one.npy", images())
    with pytest.raises(DataError, match=r"one\.npy.*not an \.npz"):
        build_dataset(*cfg(tmp_path / "one.npy"), "train", 256)
    with pytest.raises(DataError, match=r"missing\.npz.*no such"):
        build_dataset(*cfg(tmp_path / "missing.npz"), "train", 256)
