"""Tiny random-weight checkpoints for the evaluation tests (8×8 digits, T = 20, a 2-level U-Net)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from ddpm.checkpoint import save_model
from ddpm.config import DiffusionConfig, RunConfig, UNetConfig, override, preset
from ddpm.nets import network_for

REPO = Path(__file__).resolve().parents[1]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header."""
    with Image.open(path) as img:
        return img.size


def tiny_config(T: int = 20, **changes: object) -> RunConfig:
    """The digits preset shrunk: base 32 channels, mults (1, 2), attention at 4×4, T steps, 17 levels."""
    cfg = override(preset("digits"), T=T, beta_end=0.2, dropout=0.0)
    cfg = RunConfig(name="tiny", model=UNetConfig(image_size=8, in_channels=1, base_channels=32, channel_mults=(1, 2),
                                                  num_res_blocks=1, attn_resolutions=(4,), num_groups=8, dropout=0.0),
                    diffusion=DiffusionConfig(T=T, beta_end=0.2, levels=17), data=cfg.data, train=cfg.train)
    return override(cfg, **changes) if changes else cfg


def make_checkpoint(path: Path, T: int = 20, seed: int = 0, **changes: object) -> Path:
    """A model-only checkpoint of a random tiny U-Net."""
    cfg = tiny_config(T, **changes)
    torch.manual_seed(seed)
    net = network_for(cfg)
    return save_model(path, cfg.to_dict(), net.state_dict())


def run_cli(*args: str, nproc: int = 1, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m ddpm.cli ARGS`` in a subprocess, or under torchrun with ``nproc`` gloo processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m"] \
        if nproc > 1 else [sys.executable, "-m"]
    proc = subprocess.run([*launcher, "ddpm.cli", *args], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=REPO, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file."""
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(autouse=True)
def one_thread():
    """Evaluation tests run single-threaded (so that float sums are comparable across processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
