""".npz sources: layouts, own or held-out split, exact values, and errors naming the file and key."""

from __future__ import annotations

import io
import math
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib import format as npy_format

from ddpm.config import DataConfig
from ddpm.data import DataError, build_dataset, npz


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


def npz_of(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    """An .npz written member by member, so that a member may be anything a stranger puts there."""
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def npy(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, arr)
    return out.getvalue()


def npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    """A .npy header alone: it declares the array, no data follows."""
    out = io.BytesIO()
    npy_format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue()


@pytest.mark.parametrize("member", ["images.npy", "labels.npy", "class_names.npy"])
def test_a_member_that_is_not_an_npy_array_is_named(tmp_path: Path, member: str) -> None:
    # numpy's NpzFile hands such a member back as raw bytes: an AttributeError ('bytes' has no dtype) before
    good = {"images.npy": npy(images(4)), "labels.npy": npy(np.zeros(4, np.int64)),
            "class_names.npy": npy(np.array(["a"]))}
    path = npz_of(tmp_path / "garbage.npz", {**good, member: b"garbage"})
    with pytest.raises(DataError, match=rf"garbage\.npz: member '{member}': not a \.npy array"):
        build_dataset(*cfg(path), "train", 256)


def test_a_header_declaring_more_than_the_member_holds_is_refused_unread(tmp_path: Path) -> None:
    # 6.5 GB declared, 128 bytes stored: a MemoryError ("out of memory") before
    path = npz_of(tmp_path / "liar.npz", {"images.npy": npy_header((10**5, 256, 256))})
    with pytest.raises(DataError, match=r"liar\.npz: member 'images\.npy' \(shape \(100000, 256, 256\), "
                                        r"dtype uint8\).*declares 6,553,600,128 bytes.*lists 128"):
        build_dataset(*cfg(path), "train", 256)


def test_a_decompression_bomb_is_refused_before_it_inflates(tmp_path: Path) -> None:
    shape = (1100, 256, 256)  # 72 MB of zeros, deflated to ~70 kB (1000:1); real images deflate ~1.1–5:1
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z, z.open("images.npy", "w") as f:
        f.write(npy_header(shape))
        f.write(bytes(math.prod(shape)))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"bomb\.npz: member 'images\.npy'.*over 100:1 and over 64 MiB"):
            build_dataset(*cfg(path), "train", 256)
        assert tracemalloc.get_traced_memory()[1] < 8 * 2**20  # nothing near the declared 72 MB was allocated
    finally:
        tracemalloc.stop()


def test_a_member_larger_than_half_the_available_memory_is_refused(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.npz"
    np.savez(path, images=images(100))  # 19 kB
    monkeypatch.setattr(npz, "available_memory", lambda: 30_000)
    with pytest.raises(DataError, match=r"big\.npz: member 'images\.npy'.*more than 1/2 of the memory available"):
        build_dataset(*cfg(path), "train", 256)
    monkeypatch.setattr(npz, "available_memory", lambda: None)  # unknown: no cap
    assert len(build_dataset(*cfg(path), "train", 256)) == 80


def test_the_size_rules_admit_real_datasets() -> None:
    cifar = 50_000 * 32 * 32 * 3 + 128  # CIFAR-10's training images with their .npy header
    gib = 2**30
    assert npz.size_problem(cifar, cifar, cifar, cifar + 1000, 8 * gib) is None  # np.savez (stored)
    assert npz.size_problem(cifar, cifar, cifar // 1.3, cifar, 8 * gib) is None  # np.savez_compressed
    assert npz.size_problem(2**26, 2**26, 10, 2**20, 8 * gib) is None  # ≤ 64 MiB compresses as it likes
    assert npz.size_problem(cifar, cifar, 10**6, 10**6, 8 * gib) is not None  # 150:1 above 64 MiB
    assert npz.size_problem(cifar, cifar, cifar, cifar, 2**28) is not None  # 153 MB > half of 256 MiB
    assert npz.size_problem(100, 100, 2000, 1000, None) is not None  # more compressed bytes than the file


def test_a_compressed_npz_with_labels_and_class_names_loads(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    np.savez_compressed(path, images=images(10), labels=np.arange(10) % 2, class_names=np.array(["a", "b"]))
    ds = build_dataset(*cfg(path), "train", 256)
    assert len(ds) == 8 and ds.class_names == ("a", "b")  # type: ignore[attr-defined]
