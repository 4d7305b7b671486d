"""CIFAR-10 from the standard python archive (or its extracted folder), read with a restricted unpickler."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import logging
import lzma
import math
import os
import pickle
import tarfile
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..untrusted_pickle import check_pickle
from .base import check_split
from .errors import DataError

log = logging.getLogger(__name__)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}

# A real batch pickles to 31,035,704 bytes (10,000 images of 3,072 bytes, labels and file names) and the whole
# archive unpacks to ~178 MiB. A crafted archive (a gzip bomb, a tar header declaring terabytes, a pickle asking
# for a huge array) is refused once it goes past these, having read and held no more than them.
MAX_MEMBER_BYTES = 64 << 20
MAX_ARCHIVE_BYTES = 256 << 20
MAX_BATCH_OPS = 1 << 18  # a real batch pickles in ~40,000 opcodes (a label and a file name per image)


# --- a restricted unpickler: numpy arrays, nothing else ----------------------------------------

def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """Stands in for ``_codecs.encode`` (Python 3 pickles of protocol <= 2 store bytes so): latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedGlobal("'_codecs.encode' is allowed only as encode(str, 'latin1')")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a batch may name: numpy's array reconstructors, ndarray, dtype, latin-1 bytes."""
    try:
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
        from numpy.core.numeric import _frombuffer
    def bounded_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        # _reconstruct allocates shape × itemsize bytes at once (pickles ask for shape (0,) and fill it with
        # __setstate__, which must supply every byte): a crafted shape must not allocate more than a batch holds
        try:
            nbytes = math.prod(int(n) for n in shape) * np.dtype(dtype.decode() if isinstance(dtype, bytes)
                                                                 else dtype).itemsize
        except (TypeError, ValueError) as e:
            raise RefusedGlobal(f"'_reconstruct' of shape {str(shape)[:40]} and dtype {str(dtype)[:40]} ({e})") \
                from None
        if subtype is not np.ndarray or nbytes > MAX_MEMBER_BYTES:
            raise RefusedGlobal(f"'_reconstruct' asked for {nbytes} bytes of {getattr(subtype, '__name__', subtype)}; "
                                f"a batch's arrays hold at most {MAX_MEMBER_BYTES}")
        return _reconstruct(subtype, shape, dtype)

    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): _latin1_bytes}
    for core in ("numpy.core", "numpy._core"):  # pickles name numpy 1.x or 2.x module paths
        allowed[(f"{core}.multiarray", "_reconstruct")] = bounded_reconstruct  # protocols 0-4
        allowed[(f"{core}.numeric", "_frombuffer")] = _frombuffer  # protocol 5: a view of bytes already read
    return allowed


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside the allowed few."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` refuses every global except those numpy arrays and bytes need."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        obj = self._allowed.get((module, name))
        if obj is None:
            raise RefusedGlobal(f"global '{module}.{name}' is not allowed")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedGlobal("persistent ids are not allowed")


def safe_unpickle(data: bytes, name: str) -> Any:
    """Unpickle ``data`` with ``RestrictedUnpickler`` (Python 2 strings as bytes); errors name ``name``.

    The opcodes are pre-scanned first: memo re-use can make a few KB unpickle into a tuple whose hash (as a
    dict key) or a list whose np.asarray walks 2⁴⁰ nodes, and no global needs to be named for that.
    """
    check_pickle(data, name, DataError, max_ops=MAX_BATCH_OPS)
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except RefusedGlobal as e:
        raise DataError(
            f"{name}: refused to unpickle ({e}); a CIFAR-10 batch holds only dicts, lists, bytes and "
            "numpy arrays"
        ) from e
    except Exception as e:
        raise DataError(f"{name}: damaged CIFAR-10 batch, cannot unpickle it ({type(e).__name__}: {e})") \
            from e


# --- batches -------------------------------------------------------------------------------------

def _field(batch: dict[Any, Any], key: str, name: str) -> Any:
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    keys = sorted(repr(k)[:40] if isinstance(k, (str, bytes)) else type(k).__name__ for k in batch)
    raise DataError(f"{name}: the batch has no {key!r} entry (keys: {keys[:10]}{' …' if len(keys) > 10 else ''})")


def parse_batch(batch: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64 of one unpickled batch."""
    if not isinstance(batch, dict):
        raise DataError(f"{name}: expected a dict, got {type(batch).__name__}")
    data, labels = _field(batch, "data", name), _field(batch, "labels", name)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{name}: 'data' must be a uint8 array (N, 3072), got {got}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), _labels(labels, len(data), name)


def _labels(labels: Any, n: int, name: str) -> np.ndarray:
    """``labels`` as (n,) int64, if it is a flat list of n plain ints in 0..9 (or such a 1-D integer array).

    Checked item by item before numpy sees it: np.asarray would turn "1" and 1.7 into 1, overflow on 2**70
    and walk nested lists (however deep or shared) before any shape check.
    """
    expected = f"{name}: 'labels' must be a list of {n} integers in 0..9"
    if isinstance(labels, np.ndarray):
        if labels.dtype.kind not in "iu" or labels.shape != (n,):
            raise DataError(f"{expected}, got a {labels.dtype} array of shape {labels.shape}")
        if n and not 0 <= labels.min() <= labels.max() <= 9:
            raise DataError(f"{expected}, got values {labels.min()}..{labels.max()}")
        return labels.astype(np.int64)
    if not isinstance(labels, (list, tuple)):
        raise DataError(f"{expected}, got a {type(labels).__name__}")
    if len(labels) != n:
        raise DataError(f"{expected}, got {len(labels)}")
    for i, v in enumerate(labels):
        if type(v) is not int or not 0 <= v <= 9:  # not bool, "1", 1.7 or [1]: a real batch holds plain ints
            if type(v) is not int:
                shown = f"a {type(v).__name__}"
            else:
                shown = str(v) if v.bit_length() <= 64 else f"an integer of {v.bit_length()} bits"
            raise DataError(f"{expected}, got {shown} at index {i}")
    return np.asarray(labels, dtype=np.int64)


def _too_big(name: str, size: int) -> DataError:
    return DataError(f"{name}: {size} bytes, more than a CIFAR-10 batch can be (at most {MAX_MEMBER_BYTES}, "
                     "ddpm.data.cifar10.MAX_MEMBER_BYTES)")


def _read_at_most(f: Any, limit: int) -> bytes:
    """Up to ``limit`` bytes, read in 1 MiB pieces (``f.read(limit)`` would allocate all ``limit`` at once)."""
    parts, total = [], 0
    while total < limit and (part := f.read(min(1 << 20, limit - total))):
        parts.append(part)
        total += len(part)
    return b"".join(parts)


def _read_folder(folder: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    out = {}
    for n in names:
        p = folder / n
        if not p.is_file():
            raise DataError(f"{p}: missing CIFAR-10 batch")
        with open(p, "rb") as f:
            data = _read_at_most(f, MAX_MEMBER_BYTES + 1)
        if len(data) > MAX_MEMBER_BYTES:
            raise _too_big(str(p), p.stat().st_size)
        out[str(p)] = data
    return out


class _Bounded(io.RawIOBase):
    """A read-only stream that refuses to give more than ``limit`` bytes in all (decompression included)."""

    def __init__(self, inner: Any, limit: int, name: str) -> None:
        self.inner, self.left, self.name = inner, limit, name

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self.left <= 0:
            raise DataError(f"{self.name}: unpacks to more than {MAX_ARCHIVE_BYTES} bytes, far more than CIFAR-10 "
                            "(a decompression bomb?); ddpm.data.cifar10.MAX_ARCHIVE_BYTES")
        view = memoryview(buf)[: self.left]
        n = self.inner.readinto(view)
        self.left -= n
        return n


def _decompressed(raw: Any) -> Any:
    """The tar stream inside a file that may be gzip, bzip2 or xz compressed (or not at all)."""
    magic = raw.peek(6)[:6]
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw)
    if magic[:3] == b"BZh":
        return bz2.BZ2File(raw)
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(raw)
    return raw


def _read_archive(archive: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """The named batches' bytes, read from the tar without extracting anything to disk.

    The tar is read as a stream through ``_Bounded``: however its headers lie (a GNU long name or pax header of
    terabytes, a member of 10 GB of zeros), at most MAX_ARCHIVE_BYTES are decompressed and held.
    """
    found: dict[str, bytes] = {}
    try:
        with open(archive, "rb") as raw, _decompressed(raw) as inner, \
                tarfile.open(fileobj=io.BufferedReader(_Bounded(inner, MAX_ARCHIVE_BYTES, str(archive))),
                             mode="r|") as tar:
            for member in tar:
                base = PurePosixPath(member.name).name
                if member.isfile() and base in names and base not in found:
                    if member.size > MAX_MEMBER_BYTES:  # declared in its header: refused before reading it
                        raise _too_big(f"{archive}:{member.name}", member.size)
                    f = tar.extractfile(member)
                    found[base] = f.read(MAX_MEMBER_BYTES + 1) if f is not None else b""
                    if len(found) == len(names):
                        break
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        raise DataError(f"{archive}: damaged CIFAR-10 archive ({type(e).__name__}: {e})") from e
    missing = [n for n in names if n not in found]
    if missing:
        raise DataError(f"{archive}: missing CIFAR-10 batch(es) {[f'{FOLDER_NAME}/{n}' for n in missing]}")
    return {f"{archive}:{FOLDER_NAME}/{n}": found[n] for n in names}


# --- locating and downloading --------------------------------------------------------------------

def download_cifar10(dest: Path) -> Path:
    """Download the archive from the official URL to ``dest``, verify its md5, and return ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    md5 = hashlib.md5(usedforsecurity=False)
    log.info("downloading %s to %s", CIFAR10_URL, dest)
    try:
        with urllib.request.urlopen(CIFAR10_URL, timeout=60) as response, open(part, "wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                md5.update(chunk)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise DataError(f"{dest}: downloading {CIFAR10_URL} failed ({e})") from e
    if md5.hexdigest() != CIFAR10_MD5:
        part.unlink(missing_ok=True)
        raise DataError(
            f"{dest}: the download from {CIFAR10_URL} has md5 {md5.hexdigest()}, expected {CIFAR10_MD5}"
        )
    os.replace(part, dest)
    return dest


def locate_cifar10(path: str | os.PathLike[str] | None, download: bool = False) -> Path:
    """The archive or batches folder that ``path`` names (the .tar.gz, the folder, or their parent).

    Downloads into ``path`` only when nothing is there and ``download`` is True.
    """
    if path is None:
        raise DataError(
            f"dataset 'cifar10' needs data.path: {ARCHIVE_NAME}, the {FOLDER_NAME} folder or its parent "
            "(with data.download=True it is downloaded there)"
        )
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        if p.name == FOLDER_NAME or any((p / n).exists() for n in (*BATCHES["train"], *BATCHES["test"])):
            return p
        if (p / FOLDER_NAME).is_dir():
            return p / FOLDER_NAME
        if (p / ARCHIVE_NAME).is_file():
            return p / ARCHIVE_NAME
    if not download:
        raise DataError(
            f"{p}: no CIFAR-10 data found (expected {ARCHIVE_NAME}, a {FOLDER_NAME} folder, or a folder "
            f"holding one); set data.download=True to download it from {CIFAR10_URL}, or, for a folder of your "
            "own images, pass --dataset folder"
        )
    return download_cifar10(p if p.name.endswith((".tar.gz", ".tgz")) else p / ARCHIVE_NAME)


def load_cifar10(path: str | os.PathLike[str] | None, split: str,
                 download: bool = False) -> tuple[np.ndarray, np.ndarray, Path]:
    """Images (N, 32, 32, 3) uint8, labels (N,) and the source path of one split (train: 50k, test: 10k)."""
    names = BATCHES[check_split(split)]
    src = locate_cifar10(path, download)
    raw = _read_folder(src, names) if src.is_dir() else _read_archive(src, names)
    parts = [parse_batch(safe_unpickle(data, name), name) for name, data in raw.items()]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images, labels, src
