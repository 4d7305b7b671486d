"""A practitioner's journey from one process to several (gloo on the CPU): resuming with another world size says
what changes, and every process of a torchrun run does not repeat the run's one-line messages."""

import dataclasses
import logging
import os
import subprocess
import sys

import pytest
import torch

from ddpm.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from ddpm.config import override, preset
from ddpm.train import Trainer, train

TINY = dict(base_channels=16, channel_mults=[1, 2], attn_resolutions=[4], num_groups=8, T=50, batch_size=8,
            warmup_steps=2, log_every=2, sample_every=0, checkpoint_every=2, total_steps=2, ema_decay=0.9)
WORLD_SIZE_NOTE = "was written by 2 process(es) and is resumed by 1"


def tiny(**changes):
    return override(preset("digits"), **{**TINY, **changes})


def _as_if_written_by_two_processes(run):
    """The run's checkpoint, rewritten as a 2-process run writes it (world_size 2, rank 1's dropout stream)."""
    ckpt = load_checkpoint(run)
    tensors = {**ckpt.tensors, "torch_rng_rank1": ckpt.tensors["torch_rng_rank0"].clone()}
    save_checkpoint(run, dataclasses.replace(ckpt, tensors=tensors, extra={**ckpt.extra, "world_size": 2}))


@pytest.mark.parametrize("dropout", [0.1, 0.0])
def test_resuming_with_another_number_of_processes_says_what_changes(tmp_path, caplog, dropout):
    cfg = tiny(dropout=dropout)
    train(cfg, tmp_path / "run", progress=False)
    with caplog.at_level(logging.INFO, logger="ddpm.train"):
        Trainer(override(cfg, total_steps=4), tmp_path / "run", resume=True, progress=False)
    assert WORLD_SIZE_NOTE not in caplog.text  # the same world size: nothing to say
    _as_if_written_by_two_processes(tmp_path / "run")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ddpm.train"):
        Trainer(override(cfg, total_steps=4), tmp_path / "run", resume=True, progress=False)
    [record] = [r for r in caplog.records if WORLD_SIZE_NOTE in r.getMessage()]
    msg = record.getMessage()
    assert "global batch" in msg and "float rounding" in msg
    if dropout:  # dropout is drawn per process: the resumed steps' masks differ, and how to avoid it is named
        assert record.levelno == logging.WARNING
        assert "model.dropout=0.1" in msg and "ranks 1..1 are dropped" in msg and "Resume with 2 process" in msg
    else:
        assert record.levelno == logging.INFO and "no dropout" in msg


def _torchrun(port, *args):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), "-m", "ddpm.cli", "train", "--no-progress", "--device", "cpu", *args],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_scaling_a_damaged_one_process_run_to_two_says_each_thing_once(tmp_path):
    """1 process, its newest checkpoint damaged, resumed by 2 with --resume latest-valid: each line once."""
    run = tmp_path / "run"
    train(tiny(total_steps=4, dropout=0.1), run, progress=False)
    newest = list_checkpoints(run)[-1] / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[-8:] = b"garbage!"
    newest.write_bytes(bytes(data))
    res = _torchrun(29561, "--out", str(run), "--resume", "latest-valid", "--total_steps", "4")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("failed validation and will be set aside") == 1, res.stderr
    assert res.stderr.count("was written by 1 process(es) and is resumed by 2") == 1, res.stderr
    assert "ranks 1..1 start stream (seed, 'dropout', rank, 2)" in res.stderr
    assert res.stdout.count("trained digits to step 4") == 1, res.stdout
    ckpt = load_checkpoint(run)
    assert ckpt.step == 4 and ckpt.extra["world_size"] == 2
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("damaged-")] == \
        ["damaged-step_000000004"]
    assert all(torch.isfinite(v).all() for v in ckpt.model.values())
