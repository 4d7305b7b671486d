"""Images from an .npz file: uint8 (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3}.

Optional: integer ``labels`` (N,) (or ``train_labels``/``test_labels``) and ``class_names``, a 1-D array of K
strings naming labels 0..K−1, for class-conditional models.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

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


def _labels(f: Any, key: str, n: int, where: str) -> np.ndarray | None:
    if key not in f.files:
        return None
    labels = f[key]
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{where}: key {key!r}: expected {n} integer labels, got {labels.dtype} {labels.shape}"
        )
    return labels.astype(np.int64)


MAX_CLASS_NAMES = 100_000  # a name per class: ImageNet-21k has ~21,800


def _class_names(f: Any, where: str) -> tuple[str, ...] | None:
    """The file's ``class_names`` (a 1-D array of distinct strings), or None when it has none."""
    if "class_names" not in f.files:
        return None
    names = f["class_names"]
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
            raise DataError(f"{where}: has only one of 'train_images' / 'test_images' (keys: {files})")
        return f"{split}_images", f"{split}_labels", True
    if "images" in files:
        return "images", "labels", False
    if len(files) == 1:
        return files[0], "", False
    raise DataError(
        f"{where}: no 'images' key (or 'train_images' and 'test_images'), and not a single array; "
        f"keys: {files}"
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
            where = f"{p}: key {key!r}"
            images = as_nhwc(f[key], where)
            labels = _labels(f, labels_key, len(images), str(p)) if labels_key else None
            names = _class_names(f, str(p))
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{p}: cannot read as .npz ({type(e).__name__}: {e})") from e
    if not own_split:
        idx = held_out_indices(len(images), split, held_out_fraction, split_seed, str(p))
        images, labels = images[idx], (labels[idx] if labels is not None else None)
    return images, labels, names, where
