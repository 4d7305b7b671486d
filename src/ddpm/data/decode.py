"""Checking and decoding encoded images (files or bytes) with PIL, shared by folders and LMDB databases."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .base import check_image_config
from .errors import DataError
from .levels import check_levels, from_levels, requantize
from .transforms import check_min_size, fit_square

log = logging.getLogger(__name__)

Check = Literal["header", "decode"]
ImageSource = str | bytes  # a file path or the encoded bytes

# 8-bit modes with a sensible RGB / grey conversion; 16-bit, 32-bit int and float modes are refused
CONVERTIBLE_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
)
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})

# PIL only warns above its Image.MAX_IMAGE_PIXELS (this value) and refuses above twice it; here it is the limit:
# the size comes from the header, so a small file claiming 10⁵ × 10⁵ pixels (a decompression bomb) is refused
# before a pixel is decoded. 89 M pixels is a 9,459² photo, ~256 MiB as RGB.
MAX_IMAGE_PIXELS = 89_478_485


def _open(src: ImageSource) -> Image.Image:
    return Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)


def _check_pixels(width: int, height: int, name: str) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(f"{name}: {width}×{height} pixels, more than the {MAX_IMAGE_PIXELS} an image may have "
                        "(a decompression bomb?); ddpm.data.decode.MAX_IMAGE_PIXELS")


def _check_mode(mode: str, name: str) -> None:
    if mode not in CONVERTIBLE_MODES:
        raise DataError(
            f"{name}: image mode {mode!r} has no sensible 8-bit RGB/grey conversion "
            f"(supported: {sorted(CONVERTIBLE_MODES)}); convert it to 8-bit first"
        )


@dataclass(frozen=True)
class CheckedImage:
    """What ``check_image`` read from an image's header."""

    mode: str    # PIL mode, e.g. "RGB" or "L"
    width: int   # pixels as stored (before any EXIF turn, which may swap width and height)
    height: int


def check_image(src: ImageSource, name: str, image_size: int, check: Check = "header") -> CheckedImage:
    """The image's PIL mode and size; DataError naming ``name`` if it is undecodable, of an unsupported mode, or
    too small.

    ``check="header"`` parses the header and runs PIL's ``verify()`` (cheap; a truncated JPEG passes it
    and fails later when decoded); ``check="decode"`` decodes every pixel.
    """
    try:
        with _open(src) as img:
            mode, (width, height) = img.mode, img.size
            _check_pixels(width, height, name)  # on the header, before anything is decoded
            if check == "decode":
                img.load()
            else:
                img.verify()
    except DataError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise DataError(f"{name}: cannot decode the image ({type(e).__name__}: {e})") from e
    _check_mode(mode, name)
    check_min_size(height, width, image_size, name)
    return CheckedImage(mode, width, height)


# EXIF orientation (tag 0x0112) -> the transpose that turns the stored pixels upright (as ImageOps.exif_transpose)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def upright(img: Image.Image) -> Image.Image:
    """A new image: ``img`` turned as its EXIF (or XMP) orientation says, or a copy if none can be read.

    Not ``ImageOps.exif_transpose``: that also rewrites the whole EXIF block for the turned image, and raises on
    values real cameras write (an SRATIONAL (-1, 0), Pillow issue #8965) that no check here runs into first; only
    the orientation matters to the pixels.
    """
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a malformed EXIF block: shown as a viewer that cannot parse it would show the image
        orientation = 1
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return img.copy() if method is None else img.transpose(method)  # a copy outlives the file's `with`


def to_channels(img: Image.Image, channels: int) -> Image.Image:
    """``img`` as mode "L" (channels=1) or "RGB" (channels=3); transparency is composited over white."""
    target = "L" if channels == 1 else "RGB"
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        white.alpha_composite(img.convert("RGBA"))
        img = white
    return img if img.mode == target else img.convert(target)


def decode_image(src: ImageSource, name: str, image_size: int, channels: int) -> np.ndarray:
    """One image as uint8 (channels, image_size, image_size): EXIF-rotated, converted, cropped, resized."""
    try:
        with _open(src) as img:
            _check_pixels(*img.size, name)
            img.load()
            img = upright(img)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{name}: cannot decode the image ({type(e).__name__}: {e})") from e
    _check_mode(img.mode, name)
    check_min_size(img.height, img.width, image_size, name)
    arr = np.asarray(fit_square(to_channels(img, channels), image_size), dtype=np.uint8)
    return arr[None] if channels == 1 else np.ascontiguousarray(arr.transpose(2, 0, 1))


# PIL modes without colour (16-bit and float grey are refused by _check_mode)
GREY_MODES = frozenset({"1", "L", "LA", "La"})


def validate_images(names: Sequence[str], source_of: Callable[[int], ImageSource], image_size: int,
                    check: Check, skip_bad: bool, channels: int = 3, source: str = "the data",
                    cropped_level: int = logging.WARNING) -> list[int]:
    """Indices of the images passing ``check_image``: a bad one raises (or, with skip_bad, is logged).

    A 3-channel model on images that are all grey is warned about: each would be copied into R, G and B. So,
    in one line, are non-square images, whose sides beyond their largest centred square are cut (sizes from the
    headers already read: nothing more is decoded), at ``cropped_level`` (INFO where the crop is the recipe).
    """
    if check not in ("header", "decode"):
        raise DataError(f"check must be 'header' or 'decode', got {check!r}")
    good, grey = [], 0
    cropped, most_cut = 0, None  # (fraction of the longer side cut, name, image) of the most cut image
    for i, name in enumerate(names):
        try:
            info = check_image(source_of(i), name, image_size, check)
        except DataError as e:
            if not skip_bad:
                raise
            log.warning("skipping a bad image: %s", e)
            continue
        good.append(i)
        grey += info.mode in GREY_MODES
        if info.width != info.height:
            cropped += 1
            cut = 1 - min(info.width, info.height) / max(info.width, info.height)
            if most_cut is None or cut > most_cut[0]:
                most_cut = (cut, name, info)
    if channels == 3 and good and grey == len(good):
        log.warning("%s: all %d images are grey, but the model has 3 channels: each is copied into R, G and B "
                    "(pass --channels 1 for a grey model)", source, len(good))
    if most_cut is not None:
        _warn_cropped(cropped_level, source, cropped, len(good), image_size, *most_cut)
    return good


def _warn_cropped(level: int, source: str, cropped: int, n: int, image_size: int, cut: float, name: str,
                  info: CheckedImage) -> None:
    """One line for a dataset's non-square images: how many, and the most cut one with what of it is kept."""
    side, long = min(info.width, info.height), max(info.width, info.height)
    shown = name.removeprefix(source.rstrip(os.sep) + os.sep)  # a folder's file by its path in the folder
    log.log(level, "%s: %d of %d images are not square and are centre-cropped to their largest centred square "
            "before resizing to %d×%d; e.g. %s (%d×%d) keeps its centred %d×%d square, losing %d of the %d pixels "
            "of its longer side (%.0f%%): crop or pad them yourself to keep other parts",
            source, cropped, n, image_size, image_size, shown, info.width, info.height, side, side, long - side,
            long, 100 * cut)


class EncodedImageDataset(Dataset[Tensor]):
    """Encoded 8-bit images decoded lazily; items are float32 (C, H, W) in [-1, 1] at ``levels`` levels.

    Subclasses set ``names`` (one per item, used in error messages) and implement ``source_of``.
    """

    names: Sequence[str]
    labels: np.ndarray | None = None            # class labels, for sources that have them (ddpm.data.labels)
    class_names: tuple[str, ...] | None = None
    no_labels: str = "its source holds no class labels"

    def __init__(self, image_size: int, channels: int, levels: int, source: str) -> None:
        check_image_config(image_size, channels, source)
        self.image_size, self.channels = image_size, channels
        self.levels = check_levels(levels)
        self.source = source

    def source_of(self, i: int) -> ImageSource:
        """The path or encoded bytes of item ``i``."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Tensor:
        arr = decode_image(self.source_of(i), self.names[i], self.image_size, self.channels)
        return from_levels(requantize(arr, 256, self.levels), self.levels)

    def __repr__(self) -> str:
        shape = (self.channels, self.image_size, self.image_size)
        return f"{type(self).__name__}({self.source!r}, n={len(self)}, shape={shape}, levels={self.levels})"
