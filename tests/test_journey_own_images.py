"""A practitioner's journey with their own images, end to end through the ``ddpm`` command.

A folder of small non-square images in two class sub-folders (one a link to a folder elsewhere; grey, RGBA and an
EXIF-rotated JPEG among them), trained at 8×8 for a couple of steps, resumed, sampled and exported to diffusers.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _eval_tiny import one_thread  # noqa: F401 (autouse fixture)
from ddpm.cli import main
from ddpm.data.folder import ImageFolderDataset

# a 1-level U-Net at 8×8 and T = 10: every run below trains in a second or two
TINY = ["--preset", "cifar10", "--dataset", "folder", "--image_size", "8", "--base_channels", "8",
        "--channel_mults", "[1]", "--num_res_blocks", "1", "--attn_resolutions", "[]", "--num_groups", "4",
        "--dropout", "0", "--T", "10", "--batch_size", "4", "--warmup_steps", "1", "--log_every", "1",
        "--sample_every", "0", "--checkpoint_every", "2", "--device", "cpu", "--no-progress"]


def _shape(cls: int, i: int, w: int = 12, h: int = 10) -> np.ndarray:
    """A red disc (class 0) or a blue square (class 1) on a dark background, (h, w, 3) uint8."""
    rng = np.random.default_rng(100 * cls + i)
    a = np.empty((h, w, 3), np.uint8)
    a[:] = rng.integers(0, 60, 3)
    yy, xx = np.mgrid[:h, :w]
    cx, cy = w // 2 + int(rng.integers(-1, 2)), h // 2
    mask = (xx - cx) ** 2 + (yy - cy) ** 2 < 9 if cls == 0 else (abs(xx - cx) < 3) & (abs(yy - cy) < 3)
    a[mask] = (230, 40, 40) if cls == 0 else (40, 40, 230)
    return a


def _asymmetric() -> np.ndarray:
    """A disc with a white bar down its left side: turned the wrong way, the bar lies across the top."""
    a = _shape(0, 99)
    a[:, 2:4] = 255
    return a


def own_folder(tmp: Path, n: int = 8) -> Path:
    """root/circles (grey, RGBA and an EXIF-rotated JPEG among PNGs) and root/squares, a link to a folder elsewhere."""
    root, elsewhere = tmp / "data", tmp / "elsewhere" / "squares"
    (root / "circles").mkdir(parents=True)
    elsewhere.mkdir(parents=True)
    for i in range(n):
        im = Image.fromarray(_shape(0, i))
        if i == 1:
            im = im.convert("L")
        elif i == 2:
            im = im.convert("RGBA")
            im.putalpha(255)
        im.save(root / "circles" / f"c{i:02d}.png")
        Image.fromarray(_shape(1, i)).save(elsewhere / f"s{i:02d}.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter to the left: a viewer turns it back
    Image.fromarray(_asymmetric()).transpose(Image.Transpose.ROTATE_90).save(
        root / "circles" / "exif.jpg", exif=exif, quality=95)
    (root / "squares").symlink_to(elsewhere, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def journey(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One folder, a conditional run and an unconditional run of 2 steps each."""
    tmp = tmp_path_factory.mktemp("journey")
    root = own_folder(tmp)
    runs = {"root": root, "tmp": tmp}
    for name, extra in (("cond", ["--num_classes", "2"]), ("uncond", [])):
        runs[name] = tmp / name
        assert main(["train", *TINY, "--data", str(root), "--total_steps", "2", "--out", str(runs[name]),
                     *extra]) == 0
    return runs


# --- what works: the folder, the classes, resume, sampling, export ---------------------------------------------

def test_a_linked_class_and_mixed_modes_train_with_the_right_labels(journey: dict[str, Path], tmp_path: Path):
    root = journey["root"]
    ds = ImageFolderDataset(root, 8, 3, held_out_fraction=0.0)
    assert ds.class_names == ("circles", "squares") and len(ds) == 17
    assert all(("circles" in n) == (y == 0) for n, y in zip(ds.names, ds.labels))
    # the EXIF-rotated JPEG is turned upright: its red disc matches the PNG of the same picture
    upright = np.asarray(ds[ds.names.index(str(root / "circles" / "exif.jpg"))])
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    Image.fromarray(_asymmetric()).save(pictures / "a_same.png")
    Image.fromarray(_asymmetric()).transpose(Image.Transpose.ROTATE_90).save(pictures / "b_as_stored.png")
    same, as_stored = (np.asarray(x) for x in ImageFolderDataset(pictures, 8, 3, held_out_fraction=0.0))
    assert np.abs(upright - same).mean() < 0.1 and np.abs(upright - as_stored).mean() > 0.3
    meta = json.loads((journey["cond"] / "checkpoints" / "step_000000002" / "meta.json").read_text())
    assert meta["extra"]["class_names"] == ["circles", "squares"]
    out = tmp_path / "all"
    assert main(["sample", "--checkpoint", str(journey["cond"]), "--out", str(out), "--n", "3", "--class", "all",
                 "--sampler", "ddim", "--steps", "3", "--device", "cpu", "--no-progress"]) == 0
    z = np.load(out / "samples.npz")
    assert z["images"].shape == (6, 8, 8, 3) and list(z["labels"]) == [0, 0, 0, 1, 1, 1]
    assert list(z["class_names"]) == ["circles", "squares"]


def test_resume_without_preset_continues_the_custom_run(journey: dict[str, Path], tmp_path: Path):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(journey["root"]), "--total_steps", "4", "--out", str(run)]) == 0
    whole = (run / "log.csv").read_text().splitlines()
    part = tmp_path / "part"
    assert main(["train", *TINY, "--data", str(journey["root"]), "--total_steps", "2", "--out", str(part)]) == 0
    assert main(["train", "--out", str(part), "--resume", "--total_steps", "4", "--device", "cpu",
                 "--no-progress"]) == 0
    resumed = (part / "log.csv").read_text().splitlines()
    strip = [",".join(r.split(",")[:7]) for r in whole]  # the losses and gradient norms, not the clock
    assert [",".join(r.split(",")[:7]) for r in resumed] == strip


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="diffusers is not installed")
def test_the_export_of_a_custom_run_samples_in_diffusers_ddpmpipeline(journey: dict[str, Path], tmp_path: Path):
    import diffusers
    import torch

    out = tmp_path / "pipe"
    assert main(["convert", "--to-diffusers", str(journey["uncond"]), "--out", str(out)]) == 0
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape == (2, 8, 8, 3) and np.isfinite(images).all()


# --- what misleads today ----------------------------------------------------------------------------------------

def test_resume_with_the_preset_names_the_config_that_differs_not_the_data(journey: dict[str, Path], tmp_path,
                                                                           capsys):
    """The README's resume line (``--preset P --resume --total_steps N``) on a run with its own image size."""
    capsys.readouterr()
    rc = main(["train", "--preset", "cifar10", "--dataset", "folder", "--data", str(journey["root"]),
               "--out", str(journey["uncond"]), "--resume", "--total_steps", "4", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "contradicts" in err and "model.image_size" in err, err


def test_a_folder_of_grey_images_trained_as_rgb_is_named(tmp_path: Path, caplog):
    grey = tmp_path / "grey"
    grey.mkdir()
    for i in range(6):
        Image.fromarray(_shape(i % 2, i)).convert("L").save(grey / f"g{i}.png")
    with caplog.at_level(logging.INFO):
        assert main(["train", *TINY, "--data", str(grey), "--total_steps", "1", "--out", str(tmp_path / "r")]) == 0
    said = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING).lower()
    assert "grey" in said or "--channels 1" in said, said


def test_the_cifar10_preset_on_a_folder_of_images_points_at_dataset_folder(journey: dict[str, Path], tmp_path,
                                                                           capsys):
    rc = main(["train", "--preset", "cifar10", "--data", str(journey["root"]), "--out", str(tmp_path / "r"),
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "--dataset folder" in err, err


def test_adding_an_image_to_the_folder_keeps_trained_images_out_of_the_test_split(tmp_path: Path):
    root = tmp_path / "data"
    root.mkdir()
    for i in range(40):
        Image.fromarray(_shape(i % 2, i)).save(root / f"i{i:02d}.png")
    trained = set(ImageFolderDataset(root, 8, 3, split="train").names)
    Image.fromarray(_shape(0, 77)).save(root / "i99.png")  # the user adds one picture
    tested = set(ImageFolderDataset(root, 8, 3, split="test").names)
    assert not tested & trained, sorted(tested & trained)


def test_fid_names_the_missing_inception_weights_before_reading_the_reference_data(journey: dict[str, Path],
                                                                                   tmp_path: Path, capsys):
    samples = tmp_path / "samples.npz"
    np.savez(samples, images=np.zeros((4, 8, 8, 3), np.uint8))
    rc = main(["fid", "--checkpoint", str(journey["uncond"]), "--samples", str(samples), "--out",
               str(tmp_path / "fid"), "--inception-weights", str(tmp_path / "missing.pth"),
               "--data", str(tmp_path / "not-yet-copied"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "missing.pth" in err, err


def test_exporting_a_conditional_run_says_ddpmpipeline_cannot_sample_it(journey: dict[str, Path], tmp_path,
                                                                       capsys):
    capsys.readouterr()
    assert main(["convert", "--to-diffusers", str(journey["cond"]), "--out", str(tmp_path / "pipe")]) == 0
    said = capsys.readouterr()
    assert "class_labels" in said.out + said.err, said.out

