"""LSUN-style LMDB databases (keys -> encoded webp/jpeg/png bytes), with a fixed held-out split.

Needs the optional dependency ``lmdb`` (``pip install ddpm[lmdb]``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SplitBy
from .base import held_out_split
from .decode import Check, EncodedImageDataset, ImageSource, validate_images
from .errors import DataError

log = logging.getLogger(__name__)


def _import_lmdb() -> Any:
    try:
        import lmdb
    except ImportError as e:
        raise DataError(
            "dataset 'lmdb' needs the optional package 'lmdb': pip install lmdb (or ddpm[lmdb])"
        ) from e
    return lmdb


# An LSUN image is a webp of ~30 KB; a value far larger is no image this dataset holds, and is refused before it
# is copied out of the memory map (the pixel count is bounded separately, on the image header: decode.py).
MAX_VALUE_BYTES = 64 << 20

_ENVS: dict[str, tuple[int, Any]] = {}  # resolved path -> (pid, environment): one per file per process


def open_env(path: Path) -> Any:
    """The read-only LMDB environment at ``path`` (a folder holding data.mdb, or the data.mdb file).

    py-lmdb refuses to open one environment twice in a process, so environments are shared from a
    cache; a forked process (a DataLoader worker) closes its inherited copy (harmless: the environment
    is read-only without locks) and opens its own.
    """
    lmdb = _import_lmdb()
    key = str(path.resolve())
    pid, env = _ENVS.get(key, (None, None))
    if env is not None and pid == os.getpid():
        return env
    if env is not None:
        env.close()
    if not path.exists():
        raise DataError(f"{path}: no such LMDB database")
    try:
        env = lmdb.open(str(path), subdir=path.is_dir(), readonly=True, lock=False, readahead=False,
                        meminit=False, max_readers=512)
    except lmdb.Error as e:
        raise DataError(f"{path}: cannot open as an LMDB database ({e})") from e
    _ENVS[key] = (os.getpid(), env)
    return env


def read_keys(env: Any, path: Path) -> tuple[bytes, np.ndarray]:
    """All keys, in LMDB (byte) order, packed as one bytes blob and (N + 1,) offsets (no per-key objects)."""
    try:
        with env.begin(write=False) as txn:
            keys = list(txn.cursor().iternext(keys=True, values=False))
    except Exception as e:
        raise DataError(f"{path}: cannot read the LMDB keys ({e})") from e
    offsets = np.zeros(len(keys) + 1, dtype=np.int64)
    np.cumsum([len(k) for k in keys], out=offsets[1:])
    return b"".join(keys), offsets


class LMDBImageDataset(EncodedImageDataset):
    """Images stored as encoded bytes in an LMDB database (LSUN as distributed), decoded lazily.

    An LSUN database is one category: it has no class labels.

    Keys are taken in LMDB order and split by key (``held_out_by_name``; ``split_by="position"``:
    ``held_out_indices``, the rule of ddpm ≤ 0.3). Construction checks every image of
    the split like ``ImageFolderDataset`` (``check``, ``skip_bad``), which reads each value once: for
    the 3M-image LSUN bedroom set this takes a while. The dataset holds no environment (see
    ``open_env``), so it pickles and works in DataLoader workers.
    """

    def __init__(self, path: str | os.PathLike[str], image_size: int, channels: int, levels: int = 256,
                 split: str = "train", held_out_fraction: float = 0.1, split_seed: int = 0,
                 skip_bad: bool = False, check: Check = "header", split_by: SplitBy = "name") -> None:
        self.no_labels = "an LMDB database (one LSUN category) holds no class labels"
        self.path = Path(path).expanduser()
        super().__init__(image_size, channels, levels, source=str(self.path))
        blob, offsets = read_keys(open_env(self.path), self.path)
        if len(offsets) == 1:
            raise DataError(f"{self.path}: the LMDB database holds no entries")
        idx = held_out_split(_Keys(blob, offsets), split_by, split, held_out_fraction, split_seed, str(self.path))
        self._blob, self._offsets = blob, offsets
        self._index = idx
        self.names = _LazyNames(self)
        # LSUN's images are not square by design: the paper's (StyleGAN tool's) centre crop is the recipe, so INFO
        good = validate_images(self.names, self._value, image_size, check, skip_bad, channels, str(self.path),
                               cropped_level=logging.INFO)
        if len(good) < len(idx):
            log.warning("%s: skipped %d of %d images of the %s split", self.path, len(idx) - len(good),
                        len(idx), split)
        if not good:
            raise DataError(f"{self.path}: no readable images in the {split} split")
        self._index = idx[np.asarray(good, dtype=np.int64)]

    def key(self, i: int) -> bytes:
        """The LMDB key of item ``i``."""
        j = int(self._index[i])
        return self._blob[self._offsets[j]:self._offsets[j + 1]]

    def _value(self, i: int) -> bytes:
        key = self.key(i)
        with open_env(self.path).begin(write=False, buffers=True) as txn:  # a view into the map: no copy yet
            value = txn.get(key)
            if value is None:
                raise DataError(f"{self.path}: key {key!r} has no value")
            if len(value) > MAX_VALUE_BYTES:
                raise DataError(f"{self.path}[key {key!r}]: a value of {len(value)} bytes, more than an encoded image "
                                f"may be (at most {MAX_VALUE_BYTES}, ddpm.data.lsun.MAX_VALUE_BYTES)")
            return bytes(value)

    def source_of(self, i: int) -> ImageSource:
        """The encoded bytes of item ``i``."""
        return self._value(i)

    def __len__(self) -> int:
        return len(self._index)


class _Keys(Sequence[bytes]):
    """The LMDB keys held as one blob and their offsets, as a sequence (no list of millions of bytes objects)."""

    def __init__(self, blob: bytes, offsets: np.ndarray) -> None:
        self._blob, self._offsets = blob, offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, j: int) -> bytes:  # type: ignore[override]
        if not 0 <= j < len(self):
            raise IndexError(j)
        return self._blob[self._offsets[j]:self._offsets[j + 1]]


class _LazyNames:
    """Item names '<db>[key]' for error messages, built on demand (no list of millions of strings)."""

    def __init__(self, ds: LMDBImageDataset) -> None:
        self._ds = ds

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, i: int) -> str:
        return f"{self._ds.path}[key {self._ds.key(i)!r}]"

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))
