"""Faults a user meets (docs/reliability.md): bad data and arguments, killed runs, failing disks."""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from ddpm.checkpoint import list_checkpoints, load_checkpoint
from ddpm.cli import main
from ddpm.config import override, preset
from ddpm.train import Trainer, train

TINY = ["--base_channels", "16", "--channel_mults", "1,2", "--attn_resolutions", "4", "--num_groups", "8",
        "--T", "50", "--batch_size", "16", "--warmup_steps", "5", "--log_every", "2", "--sample_every", "0",
        "--ema_decay", "0.9"]


def tiny_cfg(**changes):
    cfg = preset("digits")
    base = dict(base_channels=16, channel_mults=[1, 2], attn_resolutions=[4], num_groups=8, T=50, batch_size=16,
                warmup_steps=5, log_every=2, sample_every=0, ema_decay=0.9)
    return override(cfg, **{**base, **changes})


# --- bad data and bad arguments: a clear error, nothing written -----------------------------------

def test_corrupt_image_is_named_before_any_state_changes(tmp_path, capsys):
    data = tmp_path / "images"
    (data / "sub").mkdir(parents=True)
    for i in range(20):
        Image.new("L", (8, 8), color=i * 10).save(data / f"{i}.png")
    (data / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    code = main(["train", "--preset", "digits", "--dataset", "folder", "--data", str(data), "--out",
                 str(tmp_path / "run"), *TINY])
    assert code == 2
    assert "broken.png" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,needle", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--preset", "digits", "--T", "0"], "diffusion.T must be in 1..100000"),
    (["--preset", "digits", "--beta_end", "1.5"], "β_t must lie in (0, 1)"),
    (["--preset", "digits", "--image_size", "10"], "image_size=10 must be divisible by 4"),
    (["--preset", "digits", "--lr", "-1"], "train.lr must be > 0"),
    (["--preset", "digits", "--var_type", "learned"], "loss_type='simple' gives no gradient to a learned Σ"),
    (["--preset", "digits", "--loss_type", "hybrid"], "loss_type='hybrid' trains a learned Σ through the bound"),
    (["--preset", "digits", "--no_such_option", "1"], "unknown option --no_such_option"),
])
def test_bad_arguments_name_the_option(tmp_path, capsys, args, needle):
    assert main(["train", *args, "--out", str(tmp_path / "run")]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --- crashes: SIGKILL mid-run, failing disk writes; --resume continues exactly -----------------------

def test_sigkill_during_training_then_resume_continues_exactly(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "ddpm.cli", "train", "--preset", "digits", "--out", str(run), "--no-progress",
           "--device", "cpu", *TINY, "--total_steps", "100000", "--checkpoint_every", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while len(list_checkpoints(run)) < 2 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.37)  # somewhere in a training step or a checkpoint write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    last = load_checkpoint(run)  # the latest complete checkpoint loads and validates
    k = last.step
    assert k >= 4 and k % 2 == 0
    # resume, and an uninterrupted run to the same step; both with the killed run's thread count (float sums
    # depend on it), so the comparison can be exact
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "ddpm.cli", "train", "--out", str(run), "--resume", "--total_steps",
                    str(k + 3), "--no-progress"], check=True, env=one_thread, capture_output=True, timeout=300)
    resumed = load_checkpoint(run)
    assert resumed.step == k + 3
    straight = [a if a != str(run) else str(tmp_path / "straight") for a in cmd]
    straight[straight.index("100000")] = str(k + 3)
    subprocess.run(straight, check=True, env=one_thread, capture_output=True, timeout=300)
    reference = load_checkpoint(tmp_path / "straight")
    assert all(torch.equal(resumed.model[n], reference.model[n]) for n in reference.model)


def test_failing_disk_write_keeps_the_last_checkpoint_and_resume_works(tmp_path, monkeypatch):
    from ddpm.train import trainer as trainer_mod

    run = tmp_path / "run"
    real = trainer_mod.save_checkpoint
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "save_checkpoint", flaky)
    with pytest.raises(OSError, match="No space left"):
        Trainer(tiny_cfg(total_steps=6, checkpoint_every=2), run, progress=False).run()
    assert [p.name for p in list_checkpoints(run)] == ["step_000000002"]
    monkeypatch.setattr(trainer_mod, "save_checkpoint", real)
    result = train(tiny_cfg(total_steps=6, checkpoint_every=2), run, resume=True, progress=False)
    assert result.start_step == 2 and result.step == 6
