"""LSUN-style LMDB databases: keys -> encoded images, split, exact values, bad entries, pickling."""

from __future__ import annotations

import io
import logging
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.config import DataConfig
from ddpm.data import DataError, LMDBImageDataset, build_dataset

lmdb = pytest.importorskip("lmdb")


def encode(color: tuple[int, int, int], fmt: str, size: tuple[int, int] = (12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


def make_db(path: Path, values: dict[bytes, bytes]) -> Path:
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for k, v in values.items():
            txn.put(k, v)
    env.close()
    return path


def colors(n: int) -> dict[bytes, tuple[int, int, int]]:
    return {f"{i * 7919 % 1000:040x}".encode(): (i * 20 % 256, 100, 250 - i * 10) for i in range(n)}


def cfg(path: Path, channels: int = 3, image_size: int = 8, **kw: object) -> tuple[DataConfig, tuple[int, ...]]:
    """The data section and the sample shape (channels, size, size) a model would ask for."""
    base = {"dataset": "lmdb", "path": str(path), "held_out_fraction": 0.25}
    return DataConfig(**{**base, **kw}), (channels, image_size, image_size)  # type: ignore[arg-type]


def test_split_and_exact_values(tmp_path: Path) -> None:
    cols = colors(12)
    fmts = ["WEBP", "PNG"]
    db = make_db(tmp_path / "church_outdoor_train_lmdb",
                 {k: encode(c, fmts[i % 2]) for i, (k, c) in enumerate(cols.items())})
    train, test = build_dataset(*cfg(db), "train", 256), build_dataset(*cfg(db), "test", 256)
    assert len(train) + len(test) == 12 and len(test) >= 1  # each key held out by itself (test_split_by_name)
    keys = [train.key(i) for i in range(len(train))] + [test.key(i) for i in range(len(test))]  # type: ignore
    assert sorted(keys) == sorted(cols)
    for ds in (train, test):
        for i in range(len(ds)):
            x = ds[i]
            assert x.shape == (3, 8, 8)
            for c, v in enumerate(cols[ds.key(i)]):  # type: ignore[attr-defined]
                assert torch.all(x[c] == np.float32(2 * v / 255 - 1))
    grey = build_dataset(*cfg(db, channels=1), "test", 17)[0]
    assert grey.shape == (1, 8, 8) and len(torch.unique(grey)) == 1


def test_pickles_and_works_in_forked_workers(tmp_path: Path) -> None:
    db = make_db(tmp_path / "db", {k: encode(c, "PNG") for k, c in colors(8).items()})
    ds = LMDBImageDataset(db, 8, 3, 256, "train", held_out_fraction=0.25)
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[2], ds[2])
    test = LMDBImageDataset(db, 8, 3, 256, "test", held_out_fraction=0.25)  # the same file, opened once
    assert len(test) == 2
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, multiprocessing_context="fork")
    batches = list(loader)  # forked workers open their own environment
    assert torch.equal(torch.cat(batches), torch.stack([ds[i] for i in range(len(ds))]))


def test_bad_entries_are_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    values = {k: encode(c, "PNG") for k, c in colors(8).items()}
    bad_key = sorted(values)[3]
    values[bad_key] = b"not an image at all"
    small_key = sorted(values)[5]
    values[small_key] = encode((1, 2, 3), "PNG", size=(4, 30))
    db = make_db(tmp_path / "db", values)
    found = []
    for split in ("train", "test"):
        try:
            build_dataset(*cfg(db), split, 256)  # type: ignore[arg-type]
        except DataError as e:
            found.append(str(e))
    assert any(str(db) in m and bad_key.decode() in m and "cannot decode" in m for m in found) or \
        any(small_key.decode() in m and "smaller than image_size=8" in m for m in found)
    with caplog.at_level(logging.WARNING, logger="ddpm.data"):
        kept = [build_dataset(*cfg(db), s, 256, skip_bad=True)  # type: ignore[arg-type]
                for s in ("train", "test")]
    assert sum(len(d) for d in kept) == 6
    assert bad_key.decode() in caplog.text and small_key.decode() in caplog.text


def test_missing_empty_or_not_lmdb(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.*no such LMDB"):
        build_dataset(*cfg(tmp_path / "nope"), "train", 256)
    empty = make_db(tmp_path / "empty", {})
    with pytest.raises(DataError, match="empty.*no entries"):
        build_dataset(*cfg(empty), "train", 256)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "data.mdb").write_bytes(b"\0" * 100)
    with pytest.raises(DataError, match="junk"):
        build_dataset(*cfg(tmp_path / "junk"), "train", 256)


def test_missing_lmdb_package_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = make_db(tmp_path / "db", {k: encode(c, "PNG") for k, c in colors(4).items()})
    monkeypatch.setitem(sys.modules, "lmdb", None)
    with pytest.raises(DataError, match="pip install lmdb"):
        build_dataset(*cfg(db), "train", 256)
