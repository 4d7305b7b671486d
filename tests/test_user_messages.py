"""What a user is told when something is kept, cleaned up or cut: a Ctrl-C during ``ddpm train`` names the
checkpoint a ``--resume`` continues from (or that there is none); a diffusers export killed mid-write leaves no
``.tmp-*`` folder beyond the next export; non-square images are said to be centre-cropped, once per dataset."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.cli import main
from ddpm.config import DiffusionConfig, UNetConfig
from ddpm.data.folder import ImageFolderDataset
from ddpm.interop.diffusers import save_diffusers
from ddpm.nets.unet import UNet
from ddpm.train import trainer as trainer_mod

# a 1-level U-Net on the 8×8 digits at T = 10: a few steps take a second
TINY = ["--preset", "digits", "--base_channels", "8", "--channel_mults", "[1]", "--num_res_blocks", "1",
        "--attn_resolutions", "[]", "--num_groups", "4", "--dropout", "0", "--T", "10", "--batch_size", "4",
        "--warmup_steps", "1", "--log_every", "1", "--sample_every", "0", "--checkpoint_every", "2",
        "--total_steps", "6", "--device", "cpu", "--no-progress"]


def _interrupt_at_step(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make the n-th training step (1-based) raise KeyboardInterrupt, as a Ctrl-C in it would."""
    real, calls = trainer_mod.Trainer._train_step, {"n": 0}

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(trainer_mod.Trainer, "_train_step", step)


# --- 1. Ctrl-C during ddpm train ----------------------------------------------------------------------------------

def test_ctrl_c_after_a_checkpoint_names_its_step_and_the_resume_command(tmp_path: Path, monkeypatch, capsys):
    run = tmp_path / "run"
    _interrupt_at_step(monkeypatch, 4)  # in step 4: the checkpoint of step 2 is the last one written
    assert main(["train", *TINY, "--out", str(run)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "step 2" in err, err
    assert str(run / "checkpoints" / "step_000000002") in err, err
    assert f"ddpm train --out {run} --resume" in err, err
    monkeypatch.undo()
    # the command it names continues the run
    assert main(["train", "--out", str(run), "--resume", "--device", "cpu", "--no-progress"]) == 0
    assert (run / "checkpoints" / "step_000000006").is_dir()


def test_ctrl_c_before_any_checkpoint_says_there_is_nothing_to_resume(tmp_path: Path, monkeypatch, capsys):
    run = tmp_path / "run"
    _interrupt_at_step(monkeypatch, 1)
    assert main(["train", *TINY, "--out", str(run)]) == 130
    err = capsys.readouterr().err
    assert "before the first checkpoint" in err and "nothing to resume" in err, err
    assert "--resume" not in err, err
    monkeypatch.undo()
    assert main(["train", *TINY, "--out", str(run)]) == 0  # "run the same command again" does start over


# --- 2. a diffusers export killed mid-write -------------------------------------------------------------------------

UNET = UNetConfig(image_size=8, in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1,
                  attn_resolutions=(), dropout=0.0, num_groups=4)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_later_export_removes_the_tmp_folder_of_a_killed_one_and_says_so(tmp_path: Path, caplog):
    out = tmp_path / "pipe"
    dead, live = _dead_pid(), subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale, busy = tmp_path / f".tmp-pipe-{dead}", tmp_path / f".tmp-pipe-{live.pid}"
        other = tmp_path / f".tmp-other-{dead}"  # another output's: not this save's to remove
        for d in (stale, busy, other):
            (d / "unet").mkdir(parents=True)
            (d / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"partial")
        torch.manual_seed(0)
        with caplog.at_level(logging.INFO, logger="ddpm"):
            save_diffusers(out, UNET, DiffusionConfig(T=10), UNet(UNET).state_dict())
    finally:
        live.kill()
        live.wait()
    assert (out / "model_index.json").is_file()
    assert not stale.exists()
    assert busy.exists() and other.exists()  # a running process's may be a save in progress
    said = [r.getMessage() for r in caplog.records if "removed" in r.getMessage()]
    assert len(said) == 1 and str(stale) in said[0] and "interrupted save" in said[0], said


# --- 3. non-square images ----------------------------------------------------------------------------------------

def test_non_square_images_are_said_to_be_centre_cropped_once_per_dataset(tmp_path: Path, caplog):
    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / f"p{i}.png")  # 40×30
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "square.png")
    with caplog.at_level(logging.INFO, logger="ddpm"):
        ds = ImageFolderDataset(root, 8, 3, split="train", held_out_fraction=0.0)
    assert len(ds) == 4
    said = [r for r in caplog.records if "square" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING, [r.getMessage() for r in said]
    msg = said[0].getMessage()
    assert "3 of 4 images are not square" in msg, msg
    assert "e.g. p0.png (40×30)" in msg and "centred 30×30 square" in msg and "10 of the 40 pixels" in msg, msg


def test_square_images_are_not_warned_about(tmp_path: Path, caplog):
    root = tmp_path / "squares"
    root.mkdir()
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / f"s{i}.png")
    with caplog.at_level(logging.INFO, logger="ddpm"):
        ImageFolderDataset(root, 8, 3, split="train", held_out_fraction=0.0)
    assert not [r for r in caplog.records if "square" in r.getMessage()]
