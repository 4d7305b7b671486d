"""Image folders: recursive listing, crop/resize/convert, the held-out split, and bad files named."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.config import DataConfig
from ddpm.data import DataError, ImageFolderDataset, build_dataset


def solid(path: Path, size: tuple[int, int], color: tuple[int, ...] | int, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def noise_image(path: Path, size: int = 16, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(a).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(a).save(path)
    return path


def make_tree(root: Path, n: int = 10) -> list[Path]:
    """n images spread over nested folders and formats, plus files that must be ignored."""
    files = []
    for i in range(n):
        sub = root / ("a" if i % 2 else "b/c")
        ext = [".png", ".jpg", ".bmp", ".webp", ".gif"][i % 5]
        files.append(solid(sub / f"img{i:02d}{ext}", (12, 12), (20 * i, 100, 255 - 20 * i)))
    (root / "notes.txt").write_text("not an image")
    solid(root / ".hidden" / "x.png", (12, 12), (0, 0, 0))
    solid(root / ".y.png", (12, 12), (0, 0, 0))
    return files


def cfg(root: Path, channels: int = 3, image_size: int = 8, **kw: object) -> tuple[DataConfig, tuple[int, ...]]:
    """The data section and the sample shape (channels, size, size) a model would ask for."""
    base = {"dataset": "folder", "path": str(root), "held_out_fraction": 0.3}
    return DataConfig(**{**base, **kw}), (channels, image_size, image_size)  # type: ignore[arg-type]


def test_split_is_a_fixed_disjoint_partition_of_sorted_files(tmp_path: Path) -> None:
    files = make_tree(tmp_path)
    train, test = build_dataset(*cfg(tmp_path), "train", 256), build_dataset(*cfg(tmp_path), "test", 256)
    assert len(train) + len(test) == 10 and len(test) >= 1  # each file held out by its name (test_split_by_name)
    names = train.names + test.names  # type: ignore[attr-defined]
    assert sorted(names) == sorted(map(str, files))
    rel = [Path(p).relative_to(tmp_path).as_posix() for p in train.names]  # type: ignore[attr-defined]
    assert rel == sorted(rel)
    again = build_dataset(*cfg(tmp_path), "train", 256)
    assert all(torch.equal(again[i], train[i]) for i in range(len(train)))
    other = build_dataset(*cfg(tmp_path, split_seed=5), "test", 256)
    assert other.names != test.names  # type: ignore[attr-defined]


def test_exact_values_after_crop_resize_and_levels(tmp_path: Path) -> None:
    solid(tmp_path / "wide.png", (40, 20), (10, 200, 31))
    img = Image.new("RGB", (30, 20), (255, 0, 0))
    img.paste((10, 200, 31), (5, 0, 25, 20))  # the centered 20x20 square is green, the sides red
    img.save(tmp_path / "sides.png")
    ds = ImageFolderDataset(tmp_path, 8, 3, 256, "train", held_out_fraction=0.01)
    assert len(ds) == 2
    for x in (ds[0], ds[1]):
        assert x.shape == (3, 8, 8) and x.dtype == torch.float32
        for c, v in enumerate((10, 200, 31)):
            assert torch.all(x[c] == np.float32(2 * v / 255 - 1))
    x17 = ImageFolderDataset(tmp_path, 8, 3, 17, "train", held_out_fraction=0.01)[0]
    for c, v in enumerate((10, 200, 31)):
        k = (2 * v * 16 + 255) // 510
        assert torch.all(x17[c] == np.float32(2 * k / 16 - 1))


def test_mode_conversions(tmp_path: Path) -> None:
    solid(tmp_path / "a_grey.png", (8, 8), 77, mode="L")
    solid(tmp_path / "b_rgba.png", (8, 8), (0, 0, 0, 0), mode="RGBA")  # fully transparent: white
    solid(tmp_path / "c_rgb.png", (8, 8), (10, 200, 30))
    solid(tmp_path / "d_pal.gif", (8, 8), (40, 50, 60)).with_suffix(".gif")
    rgb = ImageFolderDataset(tmp_path, 8, 3, 256, "train", held_out_fraction=0.01)
    grey = ImageFolderDataset(tmp_path, 8, 1, 256, "train", held_out_fraction=0.01)
    assert [Path(n).name for n in rgb.names] == ["a_grey.png", "b_rgba.png", "c_rgb.png", "d_pal.gif"]
    assert torch.all(rgb[0] == np.float32(2 * 77 / 255 - 1))
    assert torch.all(rgb[1] == 1.0)
    assert grey[2].shape == (1, 8, 8)
    luma = (10 * 19595 + 200 * 38470 + 30 * 7471 + 0x8000) >> 16
    assert torch.all(grey[2] == np.float32(2 * luma / 255 - 1))
    assert torch.all(grey[1] == 1.0)


def test_empty_or_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="empty.*no images found"):
        build_dataset(*cfg(tmp_path / "empty"), "train", 256)
    with pytest.raises(DataError, match="missing.*not a folder"):
        build_dataset(*cfg(tmp_path / "missing"), "train", 256)
    with pytest.raises(DataError, match="needs data.path"):
        build_dataset(replace(cfg(tmp_path)[0], path=None), (3, 8, 8), "train", 256)


def build_both(root: Path, **kw: object) -> list[ImageFolderDataset]:
    """Both splits (so a bad file fails whichever split holds it)."""
    return [ImageFolderDataset(root, 8, 3, 256, s, held_out_fraction=0.3, **kw)  # type: ignore[arg-type]
            for s in ("train", "test")]


@pytest.mark.parametrize("kind", ["corrupt", "truncated_png", "too_small", "sixteen_bit"])
def test_bad_files_are_named_at_construction(tmp_path: Path, kind: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    for i in range(6):
        noise_image(tmp_path / f"ok{i}.png", seed=i)
    bad = tmp_path / "sub" / f"bad_{kind}.png"
    bad.parent.mkdir()
    if kind == "corrupt":
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    elif kind == "truncated_png":
        data = noise_image(tmp_path / "tmp.png").read_bytes()
        (tmp_path / "tmp.png").unlink()
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "too_small":
        solid(bad, (20, 6), (1, 2, 3))
    else:
        Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(bad)
    match = {"too_small": "smaller than image_size=8", "sixteen_bit": "mode"}.get(kind, "cannot decode")
    with pytest.raises(DataError, match=rf"bad_{kind}\.png.*{match}"):
        build_both(tmp_path)
    with caplog.at_level(logging.WARNING, logger="ddpm.data"):
        kept = build_both(tmp_path, skip_bad=True)
    assert sum(len(d) for d in kept) == 6
    assert f"bad_{kind}.png" in caplog.text


def test_truncated_jpeg_fails_on_decode_naming_it(tmp_path: Path) -> None:
    for i in range(6):
        noise_image(tmp_path / f"ok{i}.jpg", size=64, seed=i)
    data = (tmp_path / "ok3.jpg").read_bytes()
    (tmp_path / "ok3.jpg").write_bytes(data[: len(data) // 2])
    datasets = build_both(tmp_path)  # the header check cannot see a cut JPEG
    ds = next(d for d in datasets if any(n.endswith("ok3.jpg") for n in d.names))
    i = next(i for i, n in enumerate(ds.names) if n.endswith("ok3.jpg"))
    with pytest.raises(DataError, match=r"ok3\.jpg.*truncated"):
        ds[i]
    with pytest.raises(DataError, match=r"ok3\.jpg.*truncated"):
        build_both(tmp_path, check="decode")
    assert sum(len(d) for d in build_both(tmp_path, check="decode", skip_bad=True)) == 5


def test_channels_and_levels_are_checked(tmp_path: Path) -> None:
    make_tree(tmp_path)
    with pytest.raises(DataError, match="channels"):
        build_dataset(*cfg(tmp_path, channels=2), "train", 256)
    with pytest.raises(DataError, match="levels"):
        build_dataset(*cfg(tmp_path), "train", 1000)
    with pytest.raises(DataError, match="split"):
        build_dataset(*cfg(tmp_path), "val", 256)  # type: ignore[arg-type]


def test_works_with_a_dataloader(tmp_path: Path) -> None:
    make_tree(tmp_path)
    ds = build_dataset(*cfg(tmp_path), "train", 256)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch.shape == (4, 3, 8, 8) and batch.min() >= -1 and batch.max() <= 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_named_like_an_image_is_skipped_not_opened(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    for i in range(3):
        noise_image(tmp_path / f"ok{i}.png", seed=i)
    fifo = tmp_path / "sub" / "stuck.png"
    fifo.parent.mkdir()
    os.mkfifo(fifo)  # opening it for reading blocks until a writer comes: the listing hung forever before
    (tmp_path / "link.png").symlink_to(tmp_path / "ok0.png")  # a link to an image is still an image
    result: list[list[ImageFolderDataset]] = []
    with caplog.at_level(logging.WARNING, logger="ddpm.data"):
        worker = threading.Thread(target=lambda: result.append(build_both(tmp_path)), daemon=True)
        worker.start()
        worker.join(timeout=20)
    if worker.is_alive():  # a regression: release the reader (a writer's open lets it go on), then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the folder dataset hangs on a FIFO named like an image")
    (both,) = result
    assert sum(len(d) for d in both) == 4  # both splits (the FIFO fell in one): 3 images and the link
    assert "not regular files" in caplog.text and "stuck.png" in caplog.text


def test_held_out_fraction_zero_trains_on_every_image_and_has_no_test_split(tmp_path: Path) -> None:
    from ddpm.config import preset

    files = make_tree(tmp_path, 10)
    ds = ImageFolderDataset(tmp_path, 8, 3, 256, "train", held_out_fraction=0.0)
    assert len(ds) == len(files)
    with pytest.raises(DataError, match="there is no test split: data.held_out_fraction is 0, so all 10 items train"):
        ImageFolderDataset(tmp_path, 8, 3, 256, "test", held_out_fraction=0.0)
    # the paper trains its 256×256 models on every image: so do their presets
    data = replace(preset("celebahq256").data, path=str(tmp_path))
    assert len(build_dataset(data, (3, 8, 8), "train", 256)) == len(files)
    with pytest.raises(DataError, match="held_out_fraction"):  # the digits metric needs its test split
        build_dataset(DataConfig(dataset="digits", held_out_fraction=0.0), (1, 8, 8), "train", 17)
