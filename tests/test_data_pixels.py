"""Image folders as honest users have them (linked class folders, EXIF, every mode, file order), against PIL."""

from __future__ import annotations

import io
import logging
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.data import ImageFolderDataset, LabelledDataset
from ddpm.data.decode import check_image, decode_image
from ddpm.data.folder import list_images

RNG = np.random.default_rng(0)


def noise(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def save(path: Path, a: np.ndarray, **kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(path, **kw)
    return path


def as_unit(a: np.ndarray) -> np.ndarray:
    """uint8 HWC as the float32 CHW values in [-1, 1] an item must hold (x/127.5 - 1, the paper's scaling)."""
    return (a.astype(np.float64).transpose(2, 0, 1) / 127.5 - 1).astype(np.float32)


# --- folders: linked class folders, file order ------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links on this platform")
def test_linked_class_folders_are_read_like_torchvision_imagefolder(tmp_path: Path) -> None:
    """A class folder that is a link to the data elsewhere (a common way to assemble a dataset) is read.

    Before, os.walk did not follow directory links: the linked class's images were silently left out, and the
    run trained on (and labelled) only the other classes.
    """
    store, root = tmp_path / "store", tmp_path / "root"
    cats = [save(store / "cats" / f"c{i}.png", noise(8, 8, seed=i)) for i in range(3)]
    dogs = [save(root / "dogs" / f"d{i}.png", noise(8, 8, seed=10 + i)) for i in range(2)]
    (root / "cats").symlink_to(store / "cats", target_is_directory=True)
    (root / "dogs" / "loop").symlink_to(root, target_is_directory=True)  # a cycle: must not recurse forever
    listed = [p.relative_to(root).as_posix() for p in list_images(root)]
    assert listed == ["cats/c0.png", "cats/c1.png", "cats/c2.png", "dogs/d0.png", "dogs/d1.png"]
    ds = ImageFolderDataset(root, 8, 3, 256, "train", held_out_fraction=0.01)
    assert len(ds) == 5 and ds.class_names == ("cats", "dogs")
    pairs = LabelledDataset(ds, 2)
    for i, src in enumerate([*cats, *dogs]):
        x, y = pairs[i]
        assert y == (0 if i < 3 else 1)
        assert np.array_equal(x.numpy(), as_unit(np.asarray(Image.open(src))))


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links on this platform")
def test_mutually_linked_folders_end(tmp_path: Path) -> None:
    """a/l -> b and b/m -> a: a cycle that only the chain of folders walked so far can see."""
    for d in ("a", "b"):
        save(tmp_path / d / "x.png", noise(4, 4))
    (tmp_path / "a" / "l").symlink_to(tmp_path / "b", target_is_directory=True)
    (tmp_path / "b" / "m").symlink_to(tmp_path / "a", target_is_directory=True)
    listed = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert listed == ["a/l/x.png", "a/x.png", "b/m/x.png", "b/x.png"]  # b seen through a/l, a through b/m


def test_a_folder_that_cannot_be_listed_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """An unreadable sub-folder (permissions, a stale mount) was left out without a word; now it is named."""
    save(tmp_path / "ok" / "a.png", noise(4, 4))
    save(tmp_path / "locked" / "b.png", noise(4, 4))
    real_scandir = os.scandir

    def scandir(path: object = ".") -> object:
        if os.fspath(path).endswith("locked"):  # type: ignore[call-overload]
            raise PermissionError(13, "Permission denied", os.fspath(path))  # type: ignore[call-overload]
        return real_scandir(path)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level(logging.WARNING, logger="ddpm.data"):
        assert [p.name for p in list_images(tmp_path)] == ["a.png"]
    assert "cannot list" in caplog.text and "locked" in caplog.text and "Permission denied" in caplog.text


def test_file_order_is_code_point_order_of_relative_paths(tmp_path: Path) -> None:
    """The split rests on this order: code points of the relative path (no locale, no case folding)."""
    names = ["b.png", "B.png", "a/z.png", "a-b.png", "_.png", "é.png", "Z.PNG", "a0.png"]
    for i, n in enumerate(names):
        save(tmp_path / n, noise(4, 4, seed=i))
    listed = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert listed == sorted(names, key=lambda s: [ord(ch) for ch in s])


# --- EXIF orientation ---------------------------------------------------------------------------------------

# what each EXIF orientation means (TIFF 6.0 / EXIF 2.3): the stored pixels turned upright, in plain numpy
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),  # 90° clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),  # 90° counter-clockwise
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_the_image_upright(orientation: int) -> None:
    a = noise(8, 8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG", exif=exif)
    got = decode_image(buf.getvalue(), "x", 8, 3)
    assert np.array_equal(got, np.ascontiguousarray(UPRIGHT[orientation](a)).transpose(2, 0, 1))


def jpeg_with_exif(a: np.ndarray, tiff: bytes) -> bytes:
    """A JPEG of ``a`` whose APP1 segment holds the EXIF (TIFF) block ``tiff``."""
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=95)
    jpg = buf.getvalue()
    payload = b"Exif\x00\x00" + tiff
    return jpg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpg[2:]


def test_a_photo_with_an_odd_exif_value_still_decodes_and_is_turned() -> None:
    """A camera's EXIF with an SRATIONAL (-1, 0) XResolution (Pillow issue #8965) and orientation 6.

    PIL's exif_transpose rewrites the whole EXIF block for the turned image and raises on such a value; the
    header check and check="decode" never ran it, so the file passed them and failed in the middle of training.
    Only the orientation tag matters here.
    """
    a = noise(8, 12)
    entries = [(0x0112, 3, 1, struct.pack("<HH", 6, 0)),                  # orientation 6
               (0x011A, 10, 1, struct.pack("<I", 8 + 2 + 2 * 12 + 4))]   # XResolution, SRATIONAL at the end
    tiff = (b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
            + b"".join(struct.pack("<HHI", t, k, n) + v for t, k, n, v in entries) + struct.pack("<I", 0)
            + struct.pack("<ii", -1, 0))
    data = jpeg_with_exif(a, tiff)
    check_image(data, "photo.jpg", 8, "decode")
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # the decoded pixels, not yet turned
    got = decode_image(data, "photo.jpg", 8, 3)
    upright = np.rot90(stored, -1)  # 12 x 8 after turning: the centered 8 x 8 square is rows 2..9
    assert np.array_equal(got, np.ascontiguousarray(upright[2:10]).transpose(2, 0, 1))


# --- modes: against the compositing formula and PIL's own conversions -------------------------------------------

def png(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight alpha composited over white, rounded: the documented rule for transparent pixels."""
    a = alpha.astype(np.float64)[..., None] / 255
    return np.floor(rgb * a + 255 * (1 - a) + 0.5).astype(np.uint8)


def test_every_common_mode_gives_the_documented_pixels() -> None:
    a = noise(8, 8, 4)
    rgb, alpha, grey = a[..., :3], a[..., 3], a[..., 0]
    pal, pal_alpha = noise(16, 1, 3, seed=1)[:, 0], noise(16, 1, 1, seed=2)[:, 0, 0]
    idx = noise(8, 8, 1, seed=3)[..., 0] % 16
    p = Image.fromarray(idx, "P")
    p.putpalette(pal.flatten().tolist())
    cases = {  # file bytes -> the upright RGB they must give (before any crop/resize)
        "L": (png(Image.fromarray(grey)), np.repeat(grey[..., None], 3, -1)),
        "LA": (png(Image.fromarray(np.dstack([grey, alpha]), "LA")),
               np.repeat(over_white(grey[..., None], alpha), 3, -1)),
        "RGBA": (png(Image.fromarray(a, "RGBA")), over_white(rgb, alpha)),
        "1": (png(Image.fromarray(grey > 127)), np.repeat(np.where(grey > 127, 255, 0).astype(np.uint8)[..., None],
                                                          3, -1)),
        "P": (png(p), pal[idx]),
        "P+tRNS": (png(p, transparency=bytes(pal_alpha)), over_white(pal[idx], pal_alpha[idx])),
        "CMYK": (_tiff(Image.fromarray(rgb).convert("CMYK")), np.asarray(Image.fromarray(rgb).convert("CMYK")
                                                                       .convert("RGB"))),
    }
    for mode, (data, want) in cases.items():
        check_image(data, mode, 8, "decode")
        assert np.array_equal(decode_image(data, mode, 8, 3), want.transpose(2, 0, 1)), mode
        luma = np.asarray(Image.fromarray(want).convert("L"))  # RGB -> grey: PIL's ITU-R 601-2 luma
        assert np.array_equal(decode_image(data, mode, 8, 1)[0], luma), mode


def _tiff(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "TIFF")
    return buf.getvalue()


def test_folder_items_are_x_over_127_5_minus_1_after_the_official_crop(tmp_path: Path) -> None:
    """A 13 x 9 photo at image_size 9: the StyleGAN/DDPM LSUN crop rows/cols [(w-s)//2, (w+s)//2), unresized."""
    a = noise(9, 13)
    save(tmp_path / "p.png", a)
    x = ImageFolderDataset(tmp_path, 9, 3, 256, "train", held_out_fraction=0.01)[0]
    s, w = 9, 13
    assert torch.equal(x, torch.from_numpy(as_unit(a[:, (w - s) // 2:(w + s) // 2])))
