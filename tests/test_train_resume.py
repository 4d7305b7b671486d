"""Exact resumption beyond the weights: dropout streams (sample grids, every DDP process), the log window and
log.csv's rows; and flips drawn for the global batch, whatever the number of processes."""

import csv
import logging
import os
import subprocess
import sys

import torch

from ddpm.checkpoint import load_checkpoint, save_checkpoint
from ddpm.config import override, preset
from ddpm.data import random_flip
from ddpm.rng import generator
from ddpm.train import Trainer, train

TINY = dict(base_channels=16, channel_mults=[1, 2], attn_resolutions=[4], num_groups=8, T=50, batch_size=16,
            warmup_steps=5, log_every=2, sample_every=0, checkpoint_every=3, total_steps=6, ema_decay=0.9)


def tiny(**changes):
    return override(preset("digits"), **{**TINY, **changes})


def rows(run):
    """log.csv's rows without the clock's columns."""
    with open(run / "log.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in ("wall_s", "img_per_s")} for r in csv.DictReader(f)]


def assert_same_state(a, b):
    """Bit-identical weights, EMA, optimizer and other tensors (RNG, t-sampler, log window) of two checkpoints."""
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    assert all(torch.equal(a.ema[k], b.ema[k]) for k in a.ema)
    assert a.tensors.keys() == b.tensors.keys() and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    sa, sb = a.optimizer["state"], b.optimizer["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert all(torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])) for k in sa[i])
    assert a.optimizer["param_groups"] == b.optimizer["param_groups"]


def test_sample_grids_leave_dropout_and_so_training_untouched(tmp_path):
    # the grid's fresh network is initialised from torch's global RNG, the dropout stream
    cfg = tiny(total_steps=4, checkpoint_every=4, dropout=0.1)
    plain = train(cfg, tmp_path / "plain", progress=False)
    grids = train(override(cfg, sample_every=2), tmp_path / "grids", progress=False)
    assert (tmp_path / "grids" / "samples" / "step_000000002.png").exists()
    assert grids.losses == plain.losses
    assert_same_state(load_checkpoint(tmp_path / "plain"), load_checkpoint(tmp_path / "grids"))


def test_ema_model_leaves_the_global_rng_where_it_was(tmp_path):
    t = Trainer(tiny(dropout=0.1), tmp_path / "run", progress=False)
    before = torch.get_rng_state()
    t.ema_model()
    assert torch.equal(torch.get_rng_state(), before)


def test_log_rows_of_a_stopped_and_resumed_run_are_the_uninterrupted_runs(tmp_path):
    # log_every 3 does not divide the checkpoint step 4: the window of step 4 goes on in the resumed run, and the
    # row the stopped run wrote at its end (step 4) is not one an uninterrupted run has
    cfg = tiny(total_steps=8, checkpoint_every=4, log_every=3, dropout=0.1)
    train(cfg, tmp_path / "full", progress=False)
    train(override(cfg, total_steps=4), tmp_path / "split", progress=False)
    assert [r["step"] for r in rows(tmp_path / "split")] == ["3", "4"]
    train(cfg, tmp_path / "split", resume=True, progress=False)
    assert [r["step"] for r in rows(tmp_path / "full")] == ["3", "6", "8"]
    assert rows(tmp_path / "split") == rows(tmp_path / "full")
    assert_same_state(load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "split"))


def test_log_rows_after_a_kill_between_rows_are_the_uninterrupted_runs(tmp_path):
    cfg = tiny(total_steps=8, checkpoint_every=4, log_every=3)
    train(cfg, tmp_path / "full", progress=False)
    t = Trainer(cfg, tmp_path / "split", progress=False)
    real, calls = t.diffusion.training_losses, {"n": 0}

    def killed_in_step_6(*args):  # after checkpoint 4 and row 3: row 6 must average steps 4, 5 and 6
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(*args)

    t.diffusion.training_losses = killed_in_step_6
    try:
        t.run()
    except KeyboardInterrupt:
        pass
    assert [r["step"] for r in rows(tmp_path / "split")] == ["3"]
    train(cfg, tmp_path / "split", resume=True, progress=False)
    assert rows(tmp_path / "split") == rows(tmp_path / "full")


def test_a_checkpoint_without_the_new_state_still_resumes_as_before(tmp_path, caplog):
    # an older checkpoint: no log window, no final-row flag; a CUDA run's GPU state resumed on the CPU is named
    cfg = tiny(total_steps=4, checkpoint_every=4, log_every=3)
    train(override(cfg, total_steps=2), tmp_path / "run", progress=False)
    ckpt = load_checkpoint(tmp_path / "run")
    ckpt.tensors = {k: v for k, v in ckpt.tensors.items() if not k.startswith("log_window.")}
    ckpt.tensors["cuda_rng_rank0"] = torch.zeros(16, dtype=torch.uint8)
    del ckpt.extra["log_row_final"]
    save_checkpoint(tmp_path / "run", ckpt)
    with caplog.at_level(logging.WARNING, logger="ddpm.train.trainer"):
        result = train(cfg, tmp_path / "run", resume=True, progress=False)
    assert result.step == 4 and "trained on CUDA and is resumed on cpu" in caplog.text
    assert [r["step"] for r in rows(tmp_path / "run")] == ["2", "3", "4"]  # the window restarted empty at 2


def test_cpu_checkpoints_hold_every_rank_cpu_rng_state_and_no_gpu_state(tmp_path):
    train(tiny(total_steps=2, checkpoint_every=2), tmp_path / "run", progress=False)
    names = set(load_checkpoint(tmp_path / "run").tensors)
    assert "torch_rng_rank0" in names and not any(n.startswith("cuda_rng") for n in names)


def test_flips_are_drawn_for_the_global_batch():
    x = torch.arange(32.0).view(16, 1, 1, 2)  # 16 "images" whose flip is visible: [a, b] → [b, a]
    coins = lambda: generator(0, "flip", 3)  # noqa: E731  (the trainer's stream for step 3)
    one = random_flip(x, coins(), 16, slice(0, 16))
    two = torch.cat([random_flip(x[:8], coins(), 16, slice(0, 8)), random_flip(x[8:], coins(), 16, slice(8, 16))])
    assert torch.equal(one, two)
    flipped = one[:, 0, 0, 0] > one[:, 0, 0, 1]
    assert 0 < flipped.sum() < 16 and torch.equal(one[~flipped], x[~flipped])


def _torchrun(port, *args):
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(port), "-m", "ddpm.cli", "train", "--no-progress", "--device", "cpu", *args],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]


def test_two_process_resume_with_dropout_repeats_the_uninterrupted_run_exactly(tmp_path):
    # each process's dropout stream is saved (rank 0 writes all of them) and each resumes its own
    overrides = ["--preset", "digits"]
    for k, v in {**TINY, "dropout": 0.1, "checkpoint_every": 4, "log_every": 3}.items():
        if k == "total_steps":
            continue
        overrides += [f"--{k}", ",".join(map(str, v)) if isinstance(v, list) else str(v)]
    _torchrun(29541, *overrides, "--out", str(tmp_path / "full"), "--total_steps", "8")
    _torchrun(29542, *overrides, "--out", str(tmp_path / "split"), "--total_steps", "4")
    _torchrun(29543, "--out", str(tmp_path / "split"), "--resume", "--total_steps", "8")
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "split")
    assert_same_state(a, b)
    assert {"torch_rng_rank0", "torch_rng_rank1"} <= a.tensors.keys()
    assert not torch.equal(a.tensors["torch_rng_rank0"], a.tensors["torch_rng_rank1"])
    assert rows(tmp_path / "split") == rows(tmp_path / "full")
