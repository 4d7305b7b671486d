"""Any folder of images, searched recursively, with a fixed held-out split."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np

from .base import held_out_indices
from .decode import Check, EncodedImageDataset, ImageSource, validate_images
from .errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def _is_special(path: Path) -> bool:
    """True for a FIFO, socket or device (opening a FIFO blocks until a writer comes); links count as their target.

    An entry that cannot be stat'ed (a dangling link) is kept, so that reading it names the file as before.
    """
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, extension case-insensitive, hidden entries skipped), sorted.

    Only regular files (or links to them) are images: a FIFO, socket or device with an image's name is left
    out with a warning, like any other entry that is not an image file.
    """
    found, special = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS:
                path = Path(dirpath, f)
                (special if _is_special(path) else found).append(path)
    if special:
        log.warning("%s: skipped %d entries that are not regular files (FIFOs, sockets or devices), e.g. %s",
                    root, len(special), special[0])
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def folder_classes(root: Path, files: list[Path], names: list[str]
                   ) -> tuple[tuple[str, ...] | None, np.ndarray | None, str]:
    """(class names, labels of ``names``, why there are none) for the ImageFolder convention.

    The classes are the first-level sub-folders holding any of ``files`` (every image of the folder, whatever
    the split), so the train and test splits number the classes alike.
    """
    top = [p.relative_to(root).parts for p in files]
    loose = [parts[0] for parts in top if len(parts) == 1]
    if loose:
        return None, None, f"{len(loose)} image(s) lie outside the class sub-folders, e.g. {loose[0]!r}"
    classes = tuple(sorted({parts[0] for parts in top}))
    index = {c: k for k, c in enumerate(classes)}
    labels = np.array([index[Path(n).relative_to(root).parts[0]] for n in names], dtype=np.int64)
    return classes, labels, ""


class ImageFolderDataset(EncodedImageDataset):
    """Images of a folder (recursively), center-cropped to a square and resized to ``image_size``.

    Files are sorted by relative path and split by ``held_out_indices`` (a folder has no split of
    its own). At construction every file of the split is checked (``check="header"``: PIL's
    ``verify()``, mode and size; ``check="decode"``: a full decode, slower but also catches truncated
    JPEGs); pixels are decoded lazily in ``__getitem__``. A bad file (undecodable, truncated,
    unsupported mode, smaller than ``image_size``) raises DataError naming it, or with
    ``skip_bad=True`` is logged (``logging.WARNING``) and left out. A file that passes the header check
    but fails to decode later raises DataError naming it in ``__getitem__`` (use ``check="decode"``
    to find such files up front).

    Labels follow torchvision's ImageFolder convention: each first-level sub-folder is a class, the classes
    sorted by name are indices 0..K−1 (``class_names``), and an image's label is the sub-folder it lies in
    (at any depth). A folder with images outside every sub-folder, or with none, has no labels (``no_labels``).
    """

    def __init__(self, root: str | os.PathLike[str], image_size: int, channels: int, levels: int = 256,
                 split: str = "train", held_out_fraction: float = 0.1, split_seed: int = 0,
                 skip_bad: bool = False, check: Check = "header") -> None:
        self.root = Path(root).expanduser()
        super().__init__(image_size, channels, levels, source=str(self.root))
        if not self.root.is_dir():
            raise DataError(
                f"{self.root}: not a folder (data.path of dataset 'folder' must be a folder of images)"
            )
        files = list_images(self.root)
        if not files:
            raise DataError(
                f"{self.root}: no images found (searched recursively for {sorted(IMAGE_EXTENSIONS)})"
            )
        idx = held_out_indices(len(files), split, held_out_fraction, split_seed, str(self.root))
        paths = [str(files[i]) for i in idx]
        good = validate_images(paths, paths.__getitem__, image_size, check, skip_bad)
        if len(good) < len(paths):
            log.warning("%s: skipped %d of %d images of the %s split", self.root, len(paths) - len(good),
                        len(paths), split)
        if not good:
            raise DataError(f"{self.root}: no readable images in the {split} split")
        self.names = [paths[i] for i in good]
        self.class_names, self.labels, self.no_labels = folder_classes(self.root, files, self.names)

    def source_of(self, i: int) -> ImageSource:
        """The path of item ``i``."""
        return self.names[i]
