"""Any folder of images, searched recursively, with a fixed held-out split."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np

from ..config import SplitBy
from .base import held_out_split
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


def _folder_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of the folder ``path`` (through links), or None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, extension case-insensitive, hidden entries skipped), sorted.

    Links to folders are followed, as torchvision's ImageFolder does (a class folder is often a link to the
    data elsewhere), except a link back into a folder the walk is already inside (a cycle). Files are named by
    their path under ``root`` (through the link), and sorted by it in code-point order: no locale, no case
    folding, the same on every machine. Only regular files (or links to them) are images: a FIFO, socket or
    device with an image's name is left out with a warning, like any other entry that is not an image file.
    """
    found, special = [], []
    # the folders (device, inode) from root down to each folder being walked: a link to one of them is a cycle
    chains: dict[str, tuple[tuple[int, int] | None, ...]] = {str(root): (_folder_id(str(root)),)}
    def unreadable(e: OSError) -> None:  # os.walk's default is to leave such a folder out without a word
        log.warning("%s: cannot list %s (%s): its images are left out", root, e.filename, e.strerror or e)

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
        chain = chains.pop(dirpath, ())
        kept = []
        for d in dirnames:
            if d.startswith("."):
                continue
            sub = os.path.join(dirpath, d)
            ident = _folder_id(sub)
            if ident is not None and ident in chain:
                log.warning("%s: not following %s, a link back to a folder that holds it", root, sub)
                continue
            chains[sub] = (*chain, ident)
            kept.append(d)
        dirnames[:] = kept
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

    Files are sorted by relative path and split by that path (``held_out_by_name``: a file added to the
    folder later moves no other file's split; ``split_by="position"``: ``held_out_indices``, the rule of
    ddpm ≤ 0.3, which one file more reshuffles) — a folder has no split of its own. At construction
    every file of the split is checked (``check="header"``: PIL's
    ``verify()``, mode and size; ``check="decode"``: a full decode, slower but also catches truncated
    JPEGs); pixels are decoded lazily in ``__getitem__``. A bad file (undecodable, truncated,
    unsupported mode, smaller than ``image_size``) raises DataError naming it, or with
    ``skip_bad=True`` is logged (``logging.WARNING``) and left out. A file that passes the header check
    but fails to decode later raises DataError naming it in ``__getitem__`` (use ``check="decode"``
    to find such files up front).

    Pixels: the EXIF orientation is applied; grey, palette, 1-bit and CMYK images are converted to the model's
    channels (grey repeated into RGB, RGB to grey by ITU-R 601-2 luma as PIL's ``convert("L")``); transparent
    pixels are composited over white; 16-bit and float images are refused. The largest centered square
    (rows and columns ``(n - s) // 2`` on, as the StyleGAN dataset tool that made the paper's LSUN data) is
    resized to ``image_size`` with PIL's antialiased bicubic filter (that tool used Lanczos); images are never
    resized up. Values are x/127.5 − 1 (``levels=256``; ``ddpm.data.levels``).

    Labels follow torchvision's ImageFolder convention: each first-level sub-folder is a class, the classes
    sorted by name are indices 0..K−1 (``class_names``), and an image's label is the sub-folder it lies in
    (at any depth). A folder with images outside every sub-folder, or with none, has no labels (``no_labels``).
    """

    def __init__(self, root: str | os.PathLike[str], image_size: int, channels: int, levels: int = 256,
                 split: str = "train", held_out_fraction: float = 0.1, split_seed: int = 0,
                 skip_bad: bool = False, check: Check = "header", split_by: SplitBy = "name") -> None:
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
        # a file is named by its path under the folder (through links), as the files are sorted
        names = [f.relative_to(self.root).as_posix().encode("utf-8", "surrogateescape") for f in files]
        idx = held_out_split(names, split_by, split, held_out_fraction, split_seed, str(self.root))
        paths = [str(files[i]) for i in idx]
        good = validate_images(paths, paths.__getitem__, image_size, check, skip_bad, channels, str(self.root))
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
