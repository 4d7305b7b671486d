"""CIFAR-10 loading from tiny fake archives: both layouts, exact values, a restricted unpickler, errors."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ddpm.config import DataConfig
from ddpm.data import DataError, build_dataset
from ddpm.data import cifar10 as cifar_mod
from ddpm.data.transforms import rgb_to_grey

N = 4  # images per fake batch
NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def fake_batch(i: int, byte_keys: bool = True) -> dict[Any, Any]:
    """A batch shaped like CIFAR-10's: uint8 data (N, 3072) channel-major, labels a list of ints."""
    data = np.random.default_rng(i).integers(0, 256, (N, 3072), dtype=np.uint8)
    d = {"batch_label": f"batch {i}", "data": data, "labels": [(i + j) % 10 for j in range(N)],
         "filenames": [f"img{i}_{j}.png" for j in range(N)]}
    return {k.encode(): v for k, v in d.items()} if byte_keys else d


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes as Python 2 strings (BINSTRING), as the real CIFAR-10 pickles do."""

    def save_bytes(self, obj: bytes) -> None:
        self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj if len(obj) < 256
                   else pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch = {**pickle._Pickler.dispatch, bytes: save_bytes}  # type: ignore[attr-defined]


def py2_pickle(obj: Any) -> bytes:
    """A protocol-2 pickle as Python 2 with numpy 1.x wrote it (the real CIFAR-10 format)."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def test_python3_protocol2_pickles_load() -> None:
    batch = fake_batch(0)
    loaded = cifar_mod.safe_unpickle(pickle.dumps(batch, protocol=2), "b")  # bytes via _codecs.encode
    assert np.array_equal(loaded[b"data"], batch[b"data"]) and loaded[b"batch_label"] == "batch 0"


def write_folder(root: Path, py2: bool = True) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate(NAMES):
        data = py2_pickle(fake_batch(i)) if py2 else pickle.dumps(fake_batch(i, byte_keys=False))
        (folder / name).write_bytes(data)
    return folder


def write_archive(root: Path, members: dict[str, bytes] | None = None) -> Path:
    """A tar.gz with the batches (plain pickle.dumps, str keys) under cifar-10-batches-py/."""
    if members is None:
        members = {n: pickle.dumps(fake_batch(i, byte_keys=False)) for i, n in enumerate(NAMES)}
    path = root / "cifar-10-python.tar.gz"
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def cfg(path: Path | str | None, channels: int = 3, image_size: int = 32,
        **kw: Any) -> tuple[DataConfig, tuple[int, ...]]:
    """The data section and the sample shape (channels, size, size) a model would ask for."""
    return (DataConfig(dataset="cifar10", path=None if path is None else str(path), random_flip=True, **kw),
            (channels, image_size, image_size))


def expected_train() -> tuple[np.ndarray, list[int]]:
    batches = [fake_batch(i) for i in range(5)]
    return np.concatenate([b[b"data"] for b in batches]), sum((b[b"labels"] for b in batches), [])


@pytest.mark.parametrize("layout", ["folder", "parent", "archive", "archive_parent", "folder_py3"])
def test_every_layout_gives_the_same_exact_values(tmp_path: Path, layout: str) -> None:
    if layout in ("folder", "parent", "folder_py3"):
        folder = write_folder(tmp_path, py2=layout != "folder_py3")
        path = tmp_path if layout == "parent" else folder
    else:
        archive = write_archive(tmp_path)
        path = tmp_path if layout == "archive_parent" else archive
    train, test = build_dataset(*cfg(path), "train", 256), build_dataset(*cfg(path), "test", 256)
    assert len(train) == 5 * N and len(test) == N
    data, labels = expected_train()
    x = train[5]
    assert x.shape == (3, 32, 32)
    for c, y, xx in [(0, 0, 0), (1, 7, 3), (2, 31, 31)]:
        v = int(data[5, c * 1024 + y * 32 + xx])
        assert x[c, y, xx].item() == np.float32(2 * v / 255 - 1)
    assert train.labels.tolist() == labels  # type: ignore[attr-defined]
    stored = test.images.numpy().reshape(N, -1)  # type: ignore[attr-defined]
    assert np.array_equal(stored, fake_batch(5)[b"data"])


def test_requantized_levels_grey_and_smaller_size(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    data, _ = expected_train()
    x = build_dataset(*cfg(folder), "train", 17)[0]
    v = data[0].reshape(3, 32, 32).astype(int)
    k = (2 * v * 16 + 255) // 510
    assert np.array_equal(x.numpy(), (2 * k / 16 - 1).astype(np.float32))
    grey = build_dataset(*cfg(folder, channels=1), "train", 256)[0]
    luma = rgb_to_grey(v.transpose(1, 2, 0)).astype(int)
    assert np.array_equal(grey[0].numpy(), (2 * luma / 255 - 1).astype(np.float32))
    assert build_dataset(*cfg(folder, image_size=16), "test", 256)[0].shape == (3, 16, 16)
    with pytest.raises(DataError, match="smaller than image_size=64"):
        build_dataset(*cfg(folder, image_size=64), "test", 256)


class Evil:
    """Unpickling this runs os.system: the restricted unpickler must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("form", ["folder", "archive"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path: Path, form: str) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"data": Evil(marker), "labels": [0]})
    members = {n: pickle.dumps(fake_batch(i)) for i, n in enumerate(NAMES)}
    members["data_batch_2"] = evil
    if form == "folder":
        folder = tmp_path / "cifar-10-batches-py"
        folder.mkdir()
        for name, data in members.items():
            (folder / name).write_bytes(data)
        path = folder
    else:
        path = write_archive(tmp_path / "a", members)
    with pytest.raises(DataError, match=r"data_batch_2.*refused.*system"):
        build_dataset(*cfg(path), "train", 256)
    assert not marker.exists()
    assert len(build_dataset(*cfg(path), "test", 256)) == N  # the other split is untouched


@pytest.mark.parametrize("payload", [
    pickle.dumps(Exception("x")),
    b"\x80\x04cbuiltins\neval\n(V1+1\ntR.",
    b"\x80\x04csubprocess\nPopen\n(]tR.",
    b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R.",  # only latin-1 is allowed
    pickle.dumps(np.float64(1.0)),  # numpy scalars need numpy's `scalar`: not on the list
])
def test_only_numpy_array_globals_are_allowed(payload: bytes) -> None:
    with pytest.raises(DataError, match="refused"):
        cifar_mod.safe_unpickle(payload, "batchname")
    arr = cifar_mod.safe_unpickle(pickle.dumps(np.arange(6, dtype=np.int16).reshape(2, 3), protocol=5), "b")
    assert arr.tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize(("labels", "got"), [
    ([2**70] * N, "an integer of 71 bits"),  # np.asarray raised OverflowError, an internal error
    (["1"] * N, "a str"),  # np.asarray made these 1 ...
    ([1.7] * N, "a float"),  # ... and these 1 too
    ([True] * N, "a bool"),
    ([[1]] * N, "a list"),
    ([10] * N, "10"),
    ([0] * (N + 1), str(N + 1)),
    (np.zeros(N, np.float32), "a float32 array"),
    ({0: 0}, "a dict"),
], ids=["int_2e70", "str", "float", "bool", "nested", "ten", "too_many", "float_array", "dict"])
def test_labels_must_be_a_flat_list_of_ints_in_range(labels: Any, got: str) -> None:
    batch = fake_batch(0)
    batch[b"labels"] = labels
    with pytest.raises(DataError, match=rf"^b1: 'labels' must be a list of {N} integers in 0\.\.9, got {got}"):
        cifar_mod.parse_batch(batch, "b1")
    batch[b"labels"] = np.arange(N, dtype=np.uint8)  # an integer array is a list of labels too
    assert cifar_mod.parse_batch(batch, "b1")[1].tolist() == list(range(N))


def _memo(op: bytes, i: int) -> bytes:
    return op + struct.pack("<I", i)  # LONG_BINPUT (b"r") or LONG_BINGET (b"j")


def _dag_batch(where: str, depth: int) -> bytes:
    """A 4 KB batch holding l_depth, l_0 = 0 and l_{i+1} = [l_i, l_i] (or tuples): 2^depth leaves.

    ``"key"``: a tuple DAG as a dict key, which the unpickler hashes; ``"labels"``: a list DAG as the one
    label, which np.asarray walks (depth 24 took 4.4 s, depth 40 a MemoryError).
    """
    arr = pickle.dumps(np.zeros((1, 3072), np.uint8), protocol=2)[2:-1]
    ops = b"K\x00" + _memo(b"r", 0) + b"0"
    for i in range(depth):
        pair = _memo(b"j", i) * 2
        ops += (pair + b"\x86" if where == "key" else b"](" + pair + b"e") + _memo(b"r", i + 1) + b"0"
    dag = ops + _memo(b"j", depth)
    head = b"\x80\x02}(X\x04\x00\x00\x00data" + arr + b"X\x06\x00\x00\x00labels"
    if where == "key":
        return head + b"]K\x00a" + dag + b"K\x00u."
    return head + b"]" + dag + b"au."


@pytest.mark.parametrize("where", ["key", "labels"])
def test_a_batch_whose_pickle_shares_parts_exponentially_is_refused(tmp_path: Path, where: str) -> None:
    data = _dag_batch(where, 22)
    assert len(data) < 5000
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(data)
    with pytest.raises(DataError, match=r"test_batch: a pickled object refers to shared parts so often"):
        build_dataset(*cfg(folder), "test", 256)


def test_missing_damaged_and_malformed_batches_are_named(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "a")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3.*missing"):
        build_dataset(*cfg(folder), "train", 256)
    (folder / "data_batch_3").write_bytes(py2_pickle(fake_batch(3))[:500])
    with pytest.raises(DataError, match="data_batch_3.*damaged"):
        build_dataset(*cfg(folder), "train", 256)
    bad = fake_batch(3)
    bad[b"data"] = bad[b"data"].astype(np.float32)
    (folder / "data_batch_3").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match="data_batch_3.*uint8"):
        build_dataset(*cfg(folder), "train", 256)
    bad = fake_batch(3)
    bad[b"labels"] = bad[b"labels"][:-1]
    (folder / "data_batch_3").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match="data_batch_3.*labels"):
        build_dataset(*cfg(folder), "train", 256)
    members = {n: pickle.dumps(fake_batch(i)) for i, n in enumerate(NAMES) if n != "data_batch_4"}
    archive = write_archive(tmp_path / "b", members)
    with pytest.raises(DataError, match="cifar-10-python.tar.gz.*data_batch_4"):
        build_dataset(*cfg(archive), "train", 256)


def test_damaged_archive_is_named(tmp_path: Path) -> None:
    archive = write_archive(tmp_path)
    archive.write_bytes(archive.read_bytes()[:300])
    with pytest.raises(DataError, match="cifar-10-python.tar.gz.*damaged"):
        build_dataset(*cfg(archive), "train", 256)


def test_no_data_and_no_download_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*a: Any, **k: Any) -> None:
        raise AssertionError("tried to download")

    monkeypatch.setattr(cifar_mod.urllib.request, "urlopen", no_network)
    with pytest.raises(DataError, match="download=True"):
        build_dataset(*cfg(tmp_path / "nothing"), "train", 256)
    with pytest.raises(DataError, match="needs data.path"):
        build_dataset(*cfg(None), "train", 256)


class _FakeResponse(io.BytesIO):
    def __enter__(self) -> _FakeResponse:
        return self


def test_download_verifies_md5_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = write_archive(tmp_path / "src").read_bytes()
    monkeypatch.setattr(cifar_mod.urllib.request, "urlopen", lambda url, timeout: _FakeResponse(payload))
    dest = tmp_path / "dl"
    with pytest.raises(DataError, match="md5"):
        build_dataset(*cfg(dest, download=True), "train", 256)
    assert not any(dest.iterdir())  # the partial file is gone
    monkeypatch.setattr(cifar_mod, "CIFAR10_MD5", hashlib.md5(payload).hexdigest())
    ds = build_dataset(*cfg(dest, download=True), "test", 256)
    assert len(ds) == N and (dest / "cifar-10-python.tar.gz").is_file()
