"""The held-out split by name (data.split_by): a folder's files and an LMDB's keys keep their split as items come
and go; runs of ddpm ≤ 0.3 keep the split by position they trained with."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm.config import ConfigError, DataConfig, RunConfig, override, preset
from ddpm.data import DataError, ImageFolderDataset, dataset_for, held_out_indices
from ddpm.data.base import held_out_by_name
from ddpm.rng import uniform_of_name


def names(n: int, prefix: str = "img") -> list[bytes]:
    return [f"{prefix}/{i:05d}.png".encode() for i in range(n)]


def test_uniform_of_name_is_a_function_of_seed_purpose_and_name_alone() -> None:
    u = uniform_of_name(0, "split", b"a/b.png")
    assert u == uniform_of_name(0, "split", b"a/b.png") and 0.0 <= u < 1.0
    others = {uniform_of_name(1, "split", b"a/b.png"), uniform_of_name(0, "sample", b"a/b.png"),
              uniform_of_name(0, "split", b"a/b.pnG"), uniform_of_name(0, "split", b"")}
    assert u not in others and len(others) == 4
    with pytest.raises(ValueError, match="unknown randomness purpose"):
        uniform_of_name(0, "spilt", b"x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        uniform_of_name(-1, "split", b"x")


def test_uniform_of_name_is_uniform() -> None:
    # 20,000 names: the mean and each decile's share within 5 standard errors of a uniform's
    u = np.array([uniform_of_name(3, "split", n) for n in names(20_000)])
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / len(u))
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert np.all(np.abs(counts - 2000) < 5 * math.sqrt(20_000 * 0.1 * 0.9)), counts
    # the multiples of 2^-53 (53 bits): no value is repeated among the 20,000
    assert len(np.unique(u)) == len(u)


def test_the_split_by_name_of_a_subset_is_the_split_of_the_whole_restricted_to_it() -> None:
    every = names(500)
    test_of = set(np.asarray(every, dtype=object)[held_out_by_name(every, "test", 0.2, 7, "x")])
    train_of = set(np.asarray(every, dtype=object)[held_out_by_name(every, "train", 0.2, 7, "x")])
    assert not test_of & train_of and len(test_of | train_of) == 500
    assert abs(len(test_of) - 100) < 5 * math.sqrt(500 * 0.2 * 0.8)
    rng = np.random.default_rng(0)
    for _ in range(5):  # any subset, in any order: each name keeps its split
        some = [every[i] for i in rng.permutation(500)[: rng.integers(20, 500)]]
        got = [some[i] for i in held_out_by_name(some, "test", 0.2, 7, "x")]
        assert set(got) == test_of & set(some)
        assert list(held_out_by_name(some, "test", 0.2, 7, "x")) == sorted(held_out_by_name(some, "test", 0.2, 7,
                                                                                             "x"))


def test_the_split_by_name_keeps_the_rules_of_the_split_by_position() -> None:
    with pytest.raises(DataError, match="no test split"):
        held_out_by_name(names(10), "test", 0.0, 0, "src")
    assert list(held_out_by_name(names(10), "train", 0.0, 0, "src")) == list(range(10))
    with pytest.raises(DataError, match=r"held_out_fraction must be in \[0, 1\)"):
        held_out_by_name(names(10), "train", 1.0, 0, "src")
    with pytest.raises(DataError, match="the test split is empty"):
        held_out_by_name(names(1), "test", 1e-9, 0, "src")
    with pytest.raises(DataError, match="split must be"):
        held_out_by_name(names(3), "val", 0.1, 0, "src")


def _folder(root: Path, n: int) -> Path:
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for i in range(n):
        Image.new("RGB", (8, 8), (i * 5 % 256, 30, 200)).save(root / ("a" if i % 2 else "b") / f"{i:03d}.png")
    return root


def _rel(ds: ImageFolderDataset) -> set[str]:
    return {Path(n).relative_to(ds.root).as_posix() for n in ds.names}


def test_a_folder_that_grows_loses_or_moves_keeps_every_files_split(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", 60)
    test = _rel(ImageFolderDataset(root, 8, 3, split="test", held_out_fraction=0.2))
    train = _rel(ImageFolderDataset(root, 8, 3, split="train", held_out_fraction=0.2))
    assert test and not test & train and len(test | train) == 60
    for i in range(60, 90):  # thirty images more
        Image.new("RGB", (8, 8), (i, 0, 0)).save(root / "a" / f"{i:03d}.png")
    gone = sorted(test)[0]  # and one test image deleted
    (root / gone).unlink()
    moved = tmp_path / "elsewhere"
    shutil.move(str(root), moved)
    test2 = _rel(ImageFolderDataset(moved, 8, 3, split="test", held_out_fraction=0.2))
    train2 = _rel(ImageFolderDataset(moved, 8, 3, split="train", held_out_fraction=0.2))
    assert not test2 & train, "an image the model trained on is now a test image"
    assert test2 >= test - {gone} and train2 >= train and gone not in test2 | train2


def test_split_by_position_is_ddpm_0_3s_split(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", 30)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    want = {files[i] for i in held_out_indices(30, "test", 0.1, 4, "x")}
    got = _rel(ImageFolderDataset(root, 8, 3, split="test", held_out_fraction=0.1, split_seed=4,
                                  split_by="position"))
    assert got == want and len(got) == 3


def test_the_split_rule_of_each_dataset_and_its_config_checks() -> None:
    assert DataConfig().split_rule == "position"  # digits: an array has positions, not names
    assert DataConfig(dataset="folder", path="x").split_rule == "name"
    assert DataConfig(dataset="lmdb", path="x").split_rule == "name"
    assert DataConfig(dataset="folder", path="x", split_by="position").split_rule == "position"
    for dataset in ("digits", "npz", "cifar10", "toy2d"):
        with pytest.raises(ConfigError, match="split_by='name' needs items with names"):
            override(preset("digits"), dataset=dataset, split_by="name")
    with pytest.raises(ConfigError, match="data.split_by"):
        override(preset("digits"), dataset="folder", split_by="hash")


def test_a_folder_run_of_ddpm_0_3_keeps_its_split_by_position(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", 40)
    new = override(preset("digits"), dataset="folder", path=str(root), in_channels=3)
    stored = new.to_dict()
    assert stored["data"]["split_by"] is None and RunConfig.from_dict(stored).data.split_rule == "name"
    del stored["data"]["split_by"]  # as ddpm 0.3 wrote it
    old = RunConfig.from_dict(stored)
    assert old.data.split_rule == "position"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    for split in ("train", "test"):
        ds = dataset_for(old, split)
        assert _rel(ds) == {files[i] for i in held_out_indices(40, split, 0.1, 0, "x")}  # type: ignore[arg-type]
    digits = preset("digits").to_dict()
    del digits["data"]["split_by"]
    assert RunConfig.from_dict(digits) == preset("digits")  # arrays were and are split by position


def test_lmdb_keys_split_by_name(tmp_path: Path) -> None:
    lmdb = pytest.importorskip("lmdb")
    import io

    from ddpm.data import LMDBImageDataset

    def make(path: Path, keys: list[bytes]) -> Path:
        env = lmdb.open(str(path), map_size=1 << 24)
        with env.begin(write=True) as txn:
            for k in keys:
                buf = io.BytesIO()
                Image.new("RGB", (8, 8), (len(k), 0, 0)).save(buf, "PNG")
                txn.put(k, buf.getvalue())
        env.close()
        return path

    keys = [f"{i * 7919 % 1000:040x}".encode() for i in range(40)]
    small = LMDBImageDataset(make(tmp_path / "a", keys), 8, 3, split="test", held_out_fraction=0.25)
    big = LMDBImageDataset(make(tmp_path / "b", keys + [b"z" * 40, b"0" * 40]), 8, 3, split="test",
                           held_out_fraction=0.25)
    small_keys = {small.key(i) for i in range(len(small))}
    assert small_keys and small_keys == {big.key(i) for i in range(len(big))} & set(keys)
    assert small_keys == {keys[i] for i in held_out_by_name(keys, "test", 0.25, 0, "x")}
