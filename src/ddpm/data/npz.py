"""Images from an .npz file: uint8 (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3}.

Optional: integer ``labels`` (N,) (or ``train_labels``/``test_labels``) and ``class_names``, a 1-D array of K
strings naming labels 0..K−1, for class-conditional models.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from ..config import cut, shown
from .base import check_split, held_out_indices
from .errors import DataError

_EXPECTED = "uint8 images of shape (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3} and N >= 1"


def as_nhwc(arr: np.ndarray, where: str) -> np.ndarray:
    """A uint8 image array as (N, H, W, C); channels-last wins when both readings are possible."""
    if arr.dtype != np.uint8:
        raise DataError(f"{where}: expected {_EXPECTED}, got dtype {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    elif arr.ndim == 4 and arr.shape[3] not in (1, 3):
        if arr.shape[1] not in (1, 3):
            raise DataError(
                f"{where}: expected {_EXPECTED}, got shape {arr.shape} (no axis of 1 or 3 channels)"
            )
        arr = arr.transpose(0, 2, 3, 1)
    elif arr.ndim != 4:
        raise DataError(f"{where}: expected {_EXPECTED}, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise DataError(f"{where}: expected {_EXPECTED}, got an empty array of shape {arr.shape}")
    return arr


# A member's size, checked on its .npy header and the zip directory before a byte of data is read.
INFLATE_FREE = 64 * 2**20  # members up to 64 MiB may compress as well as they like
MAX_RATIO = 100  # larger ones at most 100:1 (image data deflates ~1.1–5:1, a deflate bomb ~1000:1)
MEMORY_SHARE = 2  # and at most 1/2 of the memory available: the loader copies the array once more


def available_memory() -> int | None:
    """Bytes the system could hand out now (MemAvailable on Linux), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def size_problem(declared: int, stored: int, compressed: int, archive: int, available: int | None) -> str | None:
    """Why a member whose .npy header declares ``declared`` bytes (header included) is refused, or None.

    ``stored`` and ``compressed`` are its sizes in the zip directory, ``archive`` the size of the file: the
    directory must agree with the header, and what it inflates to is bounded by the rules above.
    """
    if declared != stored:
        return f"its .npy header declares {declared:,} bytes, but the zip directory lists {stored:,}"
    if compressed > archive:
        return f"the zip directory lists {compressed:,} compressed bytes, more than the whole file ({archive:,})"
    if stored > INFLATE_FREE and stored > MAX_RATIO * compressed:
        return (f"it inflates {compressed:,} bytes to {stored:,} (over {MAX_RATIO}:1 and over "
                f"{INFLATE_FREE // 2**20} MiB), as a decompression bomb does")
    if available is not None and stored > available // MEMORY_SHARE:
        return (f"it needs {stored / 2**30:.2f} GiB, more than 1/{MEMORY_SHARE} of the memory available "
                f"({available / 2**30:.2f} GiB)")
    return None


def _member_name(f: Any, key: str) -> str:
    """The zip member of ``key`` (``NpzFile.files`` drops the ".npy" of a member's name, as here)."""
    names = f.zip.namelist()
    return key if key in names else f"{key}.npy"


def _read_header(fp: Any, what: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of the .npy stream ``fp``, without reading its data."""
    try:
        version = npy_format.read_magic(fp)
    except ValueError as e:
        raise DataError(f"{what}: not a .npy array (no .npy magic at its start)") from e
    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
    if version not in readers:  # 3.0 only adds utf-8 field names, which no array read here may have
        raise DataError(f"{what}: .npy format version {version} is not supported (only 1.0 and 2.0)")
    shape, _, dtype = readers[version](fp)
    if dtype.hasobject:  # unpickling needs allow_pickle, which a stranger's file never gets
        raise DataError(f"{what}: cannot read an array of Python objects (dtype {dtype})")
    if dtype.itemsize == 0 or any(d < 0 for d in shape):
        raise DataError(f"{what}: malformed .npy header (shape {shown(shape)}, dtype {dtype})")
    return shape, dtype, fp.tell()


def read_member(f: Any, key: str, archive: Path) -> np.ndarray:
    """Array ``key`` of the open NpzFile ``f``, its header and sizes checked before its data is read."""
    member = _member_name(f, key)
    what = f"{archive}: member {shown(member)}"
    info = f.zip.getinfo(member)
    with f.zip.open(info) as fp:
        shape, dtype, header = _read_header(fp, what)
    declared = header + math.prod(shape) * dtype.itemsize
    why = size_problem(declared, info.file_size, info.compress_size, archive.stat().st_size, available_memory())
    if why:
        raise DataError(f"{what} (shape {shown(shape)}, dtype {dtype}) is not loaded: {why}")
    with f.zip.open(info) as fp:
        return npy_format.read_array(fp, allow_pickle=False)


def _labels(f: Any, key: str, n: int, archive: Path) -> np.ndarray | None:
    if key not in f.files:
        return None
    where = str(archive)
    labels = read_member(f, key, archive)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{where}: key {key!r}: expected {n} integer labels, got {labels.dtype} {labels.shape}"
        )
    return labels.astype(np.int64)


MAX_CLASS_NAMES = 100_000  # a name per class: ImageNet-21k has ~21,800


def _class_names(f: Any, archive: Path) -> tuple[str, ...] | None:
    """The file's ``class_names`` (a 1-D array of distinct strings), or None when it has none."""
    if "class_names" not in f.files:
        return None
    where = str(archive)
    names = read_member(f, "class_names", archive)
    if names.dtype.kind != "U" or names.ndim != 1 or not 1 <= len(names) <= MAX_CLASS_NAMES:
        raise DataError(f"{where}: key 'class_names': expected a 1-D array of 1..{MAX_CLASS_NAMES} strings, got "
                        f"{names.dtype} {names.shape}")
    out = tuple(str(n) for n in names)
    if len(set(out)) != len(out):
        raise DataError(f"{where}: key 'class_names' names a class twice")
    return out


def _choose_keys(files: list[str], split: str, where: str) -> tuple[str, str, bool]:
    """(images key, labels key, whether the file holds its own split)."""
    if "train_images" in files or "test_images" in files:
        if not {"train_images", "test_images"} <= set(files):
            raise DataError(f"{where}: has only one of 'train_images' / 'test_images' (keys: {shown(files)})")
        return f"{split}_images", f"{split}_labels", True
    if "images" in files:
        return "images", "labels", False
    if len(files) == 1:
        return files[0], "", False
    raise DataError(
        f"{where}: no 'images' key (or 'train_images' and 'test_images'), and not a single array; "
        f"keys: {shown(files)}"
    )


def load_npz(path: str | os.PathLike[str] | None, split: str, held_out_fraction: float,
             split_seed: int) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...] | None, str]:
    """Images (N, H, W, C) uint8, labels (N,) or None, class names or None, '<path>: key <key>' of one split."""
    check_split(split)
    if path is None:
        raise DataError("dataset 'npz' needs data.path: an .npz file with uint8 'images'")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p}: no such .npz file")
    try:
        f = np.load(p, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise DataError(f"{p}: a single .npy array, not an .npz archive of named arrays")
        with f:
            key, labels_key, own_split = _choose_keys(list(f.files), split, str(p))
            where = f"{p}: key {shown(key)}"
            images = as_nhwc(read_member(f, key, p), where)
            labels = _labels(f, labels_key, len(images), p) if labels_key else None
            names = _class_names(f, p)
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        # numpy quotes a header it cannot parse whole (up to 10,000 characters): cut it to one short line
        raise DataError(f"{p}: cannot read as .npz ({type(e).__name__}: {cut(str(e), 200)})") from e
    if not own_split:
        idx = held_out_indices(len(images), split, held_out_fraction, split_seed, str(p))
        images, labels = images[idx], (labels[idx] if labels is not None else None)
    return images, labels, names, where
