"""Hostile and careless input (issue 13): nothing a user made is lost, one writer per run, one line per error."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _eval_tiny import REPO, make_checkpoint, one_thread  # noqa: F401  (fixture)
from ddpm.checkpoint import list_checkpoints, load_checkpoint
from ddpm.cli import main
from ddpm.outputs import LOCK, MARKER, OutputDir, OutputError, RunLock, check_not_locked, safe_name, write_bytes

TINY = ["--base_channels", "16", "--channel_mults", "1,2", "--attn_resolutions", "4", "--num_groups", "8",
        "--T", "20", "--batch_size", "16", "--warmup_steps", "2", "--sample_every", "0", "--ema_decay", "0.9",
        "--no-progress", "--device", "cpu"]


def train_args(out: Path, steps: int = 4, every: int = 2, *extra: str) -> list[str]:
    return ["train", "--preset", "digits", "--out", str(out), *TINY, "--total_steps", str(steps),
            "--checkpoint_every", str(every), "--log_every", "1", *extra]


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes: what must stay exactly as it was."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real (tiny) training run with two checkpoints."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(train_args(run)) == 0
    return run


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --- 1. nothing a user made is deleted or overwritten without being asked ------------------------

def test_convert_into_a_training_run_is_refused_and_the_run_is_intact(trained_run, tmp_path, capsys):
    before = tree(trained_run)
    export = tmp_path / "pipe"
    assert main(["convert", "--to-diffusers", str(trained_run), "--out", str(export)]) == 0
    capsys.readouterr()
    assert main(["convert", "--from-diffusers", str(export), "--out", str(trained_run)]) == 2
    line = one_error_line(capsys)
    assert "holds a training run" in line and "--overwrite" in line
    assert tree(trained_run) == before
    # exporting over the earlier export is refused too; with --overwrite both are replaced as asked
    assert main(["convert", "--to-diffusers", str(trained_run), "--out", str(export)]) == 2
    assert "--overwrite" in one_error_line(capsys)
    assert main(["convert", "--to-diffusers", str(trained_run), "--out", str(export), "--overwrite"]) == 0
    copy = tmp_path / "copy"
    assert main(["convert", "--from-diffusers", str(export), "--out", str(copy)]) == 0
    assert main(["convert", "--from-diffusers", str(export), "--out", str(copy), "--overwrite"]) == 0
    assert load_checkpoint(copy).step == 0


@pytest.mark.parametrize("command", ["sample", "nll", "rate-distortion", "progressive", "interpolate", "fid",
                                     "decompress", "train", "quickstart", "convert"])
def test_every_command_refuses_a_folder_of_someone_elses_files(command, ckpt, trained_run, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    npz = tmp_path / "s.npz"
    np.savez(npz, images=np.zeros((4, 8, 8, 1), np.uint8))
    args = {
        "sample": ["sample", "--checkpoint", str(ckpt), "--n", "2"],
        "nll": ["nll", "--checkpoint", str(ckpt), "--limit", "1"],
        "rate-distortion": ["rate-distortion", "--checkpoint", str(ckpt), "--limit", "1"],
        "progressive": ["progressive", "--checkpoint", str(ckpt)],
        "interpolate": ["interpolate", "--checkpoint", str(ckpt)],
        "fid": ["fid", "--samples", str(npz), "--checkpoint", str(ckpt)],
        "decompress": ["decompress", str(npz), "--checkpoint", str(ckpt)],
        "train": ["train", "--preset", "digits", *TINY],
        "quickstart": ["quickstart", "--steps", "1"],
        "convert": ["convert", "--to-diffusers", str(trained_run)],
    }[command]
    assert main([*args, "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert str(out) in line and "--overwrite" in line
    assert tree(out) == {"thesis.tex": b"years of work"}


def test_a_command_may_write_again_into_its_own_output(ckpt, tmp_path, capsys):
    out = tmp_path / "s"
    for _ in range(2):
        assert main(["sample", "--checkpoint", str(ckpt), "--n", "2", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / MARKER).read_text()) == {"command": "sample"}
    # another command's output folder is not this one's
    assert main(["nll", "--checkpoint", str(ckpt), "--limit", "1", "--out", str(out)]) == 2
    assert "output of ddpm sample" in one_error_line(capsys)


@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "a/b", ".hidden", "", ".."])
def test_names_cannot_escape_the_output_folder(name, ckpt, tmp_path, capsys):
    out = tmp_path / "deep" / "out"
    assert main(["sample", "--checkpoint", str(ckpt), "--n", "2", "--out", str(out), "--name", name]) == 2
    assert "--name" in one_error_line(capsys)
    assert not (tmp_path / "deep").exists()
    with pytest.raises(OutputError):
        safe_name(name)


def test_files_get_the_users_umask_and_replace_atomically(ckpt, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        path = write_bytes(tmp_path / "f.bin", b"one")
        assert path.stat().st_mode & 0o777 == 0o644
        os.umask(0o027)
        write_bytes(path, b"two")
        assert path.stat().st_mode & 0o777 == 0o640 and path.read_bytes() == b"two"
        # a compressed file, which was 0600 before
        pngs = tmp_path / "in"
        pngs.mkdir()
        Image.new("L", (8, 8), 0).save(pngs / "a.png")
        out = tmp_path / "a.ddpz"
        assert main(["compress", str(pngs), "--checkpoint", str(ckpt), "--out", str(out), "--steps", "2",
                     "--no-progress"]) == 0
        assert out.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    capsys.readouterr()
    before = out.read_bytes()
    assert main(["compress", str(pngs), "--checkpoint", str(ckpt), "--out", str(out), "--steps", "3"]) == 2
    assert "already exists" in one_error_line(capsys) and out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_checkpoint_tensor_files_get_the_users_umask_too(tmp_path):
    """safetensors creates its files 0600: a checkpoint's weights were unreadable to the group that could read its
    meta.json (and a diffusers export's, and a Γ estimate's)."""
    old = os.umask(0o027)
    try:
        ck = make_checkpoint(tmp_path / "ck", T=4)
        pipe = tmp_path / "pipe"
        assert main(["convert", "--to-diffusers", str(ck), "--out", str(pipe)]) == 0
        assert main(["analytic-variance", "--checkpoint", str(ck), "--n-images", "2"]) == 0
    finally:
        os.umask(old)
    written = [p for p in [*ck.rglob("*"), *pipe.rglob("*"), *ck.parent.glob("*.analytic-*")] if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in written)
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {"0o640"}, \
        {p.name: oct(p.stat().st_mode & 0o777) for p in written}


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = write_bytes(tmp_path / "f.bin", b"old")

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_a_refused_command_leaves_no_empty_out(tmp_path, capsys):
    out = tmp_path / "a" / "b"
    assert main(["sample", "--checkpoint", str(tmp_path / "missing"), "--out", str(out)]) == 2
    one_error_line(capsys)
    assert not (tmp_path / "a").exists()
    with pytest.raises(RuntimeError), OutputDir(out, "sample"):
        raise RuntimeError("failed before writing")
    assert not (tmp_path / "a").exists()
    existing = tmp_path / "empty"
    existing.mkdir()
    with pytest.raises(RuntimeError), OutputDir(existing, "sample"):
        raise RuntimeError("failed before writing")
    assert existing.is_dir() and not list(existing.iterdir())  # an empty folder of the user's stays, unmarked


# --- 2. one run directory, one writer ------------------------------------------------------------

def _hold_lock(run: Path) -> subprocess.Popen:
    code = ("import sys, time; from ddpm.outputs import RunLock; l = RunLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_naming_the_holder(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = _hold_lock(run)
    try:
        assert main(train_args(run)) == 2
        line = one_error_line(capsys)
        assert f"process {holder.pid}" in line
        assert not (run / "config.json").exists() and not (run / "log.csv").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder was killed: its lock is gone with it, the note it left is recognised as stale and said so
    assert json.loads((run / LOCK).read_text())["pid"] == holder.pid
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("ddpm.outputs").addHandler(handler)
    try:
        assert main(train_args(run, 2, 2)) == 0
    finally:
        logging.getLogger("ddpm.outputs").removeHandler(handler)
    assert any(f"process {holder.pid}" in r.getMessage() and "stale" in r.getMessage() for r in records)
    assert (run / LOCK).read_text() == ""  # released cleanly


def test_two_concurrent_trainings_one_is_refused(tmp_path):
    """Two real ``ddpm train`` processes on one --out: exactly one trains, the other names it and exits 2."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ddpm.cli", *train_args(run, 200, 100)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        deadline = time.time() + 120
        while not (run / "log.csv").exists() and time.time() < deadline:  # the first holds the lock by then
            time.sleep(0.05)
        second = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert second.returncode == 2
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"process {first.pid}" in lines[0], second.stderr


def test_a_held_lock_is_seen_before_anything_else_is_checked(tmp_path):
    check_not_locked(tmp_path)  # no lock file: nothing held, and nothing written
    assert not (tmp_path / LOCK).exists()
    with RunLock(tmp_path):
        with pytest.raises(OutputError, match=f"being written by process {os.getpid()}"):
            check_not_locked(tmp_path)
    check_not_locked(tmp_path)  # released


def test_lock_in_the_same_process_is_exclusive(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(OutputError, match=f"process {os.getpid()}"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):  # released: can be taken again
        pass


# --- 5. no tracebacks for user errors --------------------------------------------------------------

def _bad_inputs(tmp: Path, ckpt: Path, run: Path) -> list[tuple[list[str], str]]:
    a_file = tmp / "a_file"
    a_file.write_text("x")
    not_npz = tmp / "bad.npz"
    not_npz.write_bytes(b"not an npz")
    corrupt = tmp / "corrupt"
    import shutil

    shutil.copytree(ckpt, corrupt)
    data = bytearray((corrupt / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (corrupt / "model.safetensors").write_bytes(bytes(data))
    nested = tmp / "nested"
    nested.mkdir()
    (nested / "config.json").write_text("[" * 100_000)
    garbage = tmp / "garbage.ddpz"
    garbage.write_bytes(b"DDPZ" + b"\0" * 10)
    return [
        (["train", "--preset", "digits", "--out", str(a_file / "sub")], "a_file"),
        (["train", "--preset", "digits", "--out", str(a_file)], "a_file"),
        (["train", "--out", str(tmp / "none"), "--resume"], "config.json"),
        (["train", "--out", str(nested), "--resume"], "config.json"),
        (["train", "--preset", "digits", "--dataset", "folder", "--data", str(tmp / "nowhere"), "--out",
          str(tmp / "r")], "nowhere"),
        (["sample", "--checkpoint", str(tmp / "missing"), "--out", str(tmp / "o")], "missing"),
        (["sample", "--checkpoint", str(a_file), "--out", str(tmp / "o")], "a_file"),
        (["sample", "--checkpoint", str(ckpt), "--out", str(a_file)], "a_file"),
        (["sample", "--checkpoint", str(ckpt), "--out", str(a_file / "sub")], "a_file"),
        (["nll", "--checkpoint", str(corrupt), "--out", str(tmp / "o")], "model.safetensors"),
        (["rate-distortion", "--checkpoint", str(corrupt), "--out", str(tmp / "o")], "model.safetensors"),
        (["progressive", "--checkpoint", str(tmp / "missing"), "--out", str(tmp / "o")], "missing"),
        (["interpolate", "--checkpoint", str(a_file), "--out", str(tmp / "o")], "a_file"),
        (["fid", "--samples", str(tmp / "missing.npz"), "--checkpoint", str(ckpt), "--out", str(tmp / "o")],
         "missing.npz"),
        (["fid", "--samples", str(not_npz), "--checkpoint", str(ckpt), "--out", str(tmp / "o")], "bad.npz"),
        (["convert", "--from-diffusers", str(tmp / "missing"), "--out", str(tmp / "o")], "missing"),
        (["convert", "--from-diffusers", str(nested), "--out", str(tmp / "o")], "config.json"),
        (["convert", "--to-diffusers", str(ckpt), "--out", str(a_file)], "a_file"),
        (["convert", "--to-diffusers", str(ckpt), "--out", str(a_file / "x")], "is a file, not a folder"),
        (["compress", str(a_file), "--checkpoint", str(ckpt), "--out", str(a_file / "x.ddpz")],
         "is a file, not a folder"),
        (["compress", str(tmp / "missing"), "--checkpoint", str(ckpt), "--out", str(tmp / "x.ddpz")], "missing"),
        (["compress", str(a_file), "--checkpoint", str(ckpt), "--out", str(tmp)], str(tmp)),
        (["decompress", str(tmp / "missing.ddpz"), "--checkpoint", str(ckpt), "--out", str(tmp / "o")],
         "missing.ddpz"),
        (["decompress", str(garbage), "--checkpoint", str(ckpt), "--out", str(tmp / "o")], "garbage.ddpz"),
        (["decompress", str(garbage), "--checkpoint", str(ckpt), "--out", str(a_file)], "a_file"),
        (["quickstart", "--out", str(a_file)], "a_file"),
        (["quickstart", "--out", str(run)], str(run)),
        (["nosuchcommand"], "nosuchcommand"),
        (["sample", "--checkpoint", str(ckpt), "--out", str(tmp / "o"), "--out", str(tmp / "o2")], "--out"),
        (["sample", "--checkpoint", str(ckpt), "--out", str(tmp / "o"), "--n", "2", "--num-samples", "3"],
         "given twice"),
        (["train", "--preset", "digits", "--dataset", "folder", "--data", str(tmp), "--data.path", str(tmp),
          "--out", str(tmp / "r")], "--data"),
        (["nll", "--checkpoint", str(ckpt), "--out", str(tmp / "o"), "--data", str(a_file)], "built in"),
        (["sample", "--checkpoint", str(ckpt), "--out", str(tmp / "o"), "--sampler", "euler"], "--sampler"),
        (["train", "--preset", "digits", "--out", str(tmp / "r"), "--resume", "sometimes"], "--resume"),
    ]


def test_every_subcommand_answers_bad_input_with_one_line(ckpt, trained_run, tmp_path, capsys):
    capsys.readouterr()
    cases = _bad_inputs(tmp_path, ckpt, trained_run)
    for args, needle in cases:
        code = main(args)
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2, (args, err)
        assert len(lines) == 1 and "Traceback" not in err, (args, err)
        assert needle in lines[0], (args, lines[0])
    for name in ("o", "o2", "r", "x.ddpz"):
        assert not (tmp_path / name).exists(), name


@pytest.mark.parametrize("option", ["", "--resume"])
def test_argument_errors_are_one_line_too(option, tmp_path, capsys):
    code = main(["sample", "--checkpoint", "x", "--out", str(tmp_path), "--sampler", "nope"]) if not option \
        else main(["train", "--out", str(tmp_path), option, "bad"])
    assert code == 2
    assert "see ddpm" in one_error_line(capsys)


def test_an_internal_error_is_exit_1_and_debug_shows_the_traceback(ckpt, tmp_path, monkeypatch, capsys):
    import ddpm.evaluation.samples as samples

    def broken(*a, **k):
        raise KeyError("a bug of ours")

    monkeypatch.setattr(samples, "generate", broken)
    assert main(["sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--n", "2"]) == 1
    line = one_error_line(capsys)
    assert "internal error KeyError" in line and "--debug" in line
    assert not (tmp_path / "o").exists()
    with pytest.raises(KeyError):
        main(["--debug", "sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--n", "2"])
    monkeypatch.setenv("DDPM_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--n", "2"])


def test_the_console_script_prints_one_line_and_no_traceback(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DDPM_DEBUG", None)
    cmd = [sys.executable, "-m", "ddpm.cli", "sample", "--checkpoint", str(tmp_path / "missing"), "--out",
           str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    proc = subprocess.run([cmd[0], "-m", "ddpm.cli", "--debug", *cmd[3:]], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 1 and "Traceback" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny full filesystem needs root (CI runs as root)")
def test_a_full_disk_is_one_line_and_the_last_checkpoint_survives(tmp_path, capsys):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        run = mnt / "run"
        # each checkpoint of this model takes 4.1 MB (weights, EMA, Adam): the third does not fit in 10 MB
        code = main(train_args(run, 40, 2))
        assert code == 2
        line = one_error_line(capsys)
        assert "no space left" in line
        cps = list_checkpoints(run)
        assert cps, "no checkpoint fitted at all: the test's disk is too small"
        load_checkpoint(cps[-1])  # the newest listed checkpoint is complete and valid
        assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


# --- 6. recovery that users expect -------------------------------------------------------------------

def test_a_damaged_latest_checkpoint_is_named_and_latest_valid_resumes_exactly(tmp_path, capsys):
    run, straight = tmp_path / "run", tmp_path / "straight"
    assert main(train_args(run, 4, 2)) == 0
    latest = list_checkpoints(run)[-1]
    data = bytearray((latest / "ema.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (latest / "ema.safetensors").write_bytes(bytes(data))
    capsys.readouterr()
    resume = ["train", "--out", str(run), "--total_steps", "6", "--no-progress"]
    assert main([*resume, "--resume"]) == 2
    line = one_error_line(capsys)
    assert "step_000000004" in line and "step_000000002" in line and "--resume latest-valid" in line
    assert main([*resume, "--resume", "latest-valid"]) == 0
    assert (run / "checkpoints" / "damaged-step_000000004").is_dir()  # set aside, not deleted
    assert main(train_args(straight, 6, 2)) == 0
    a, b = load_checkpoint(run), load_checkpoint(straight)
    assert a.step == b.step == 6
    assert all(torch.equal(a.model[k], b.model[k]) for k in b.model)


def test_after_a_kill_and_resume_every_step_is_logged_once(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ddpm.cli", *train_args(run, 100_000, 3)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
    try:
        deadline = time.time() + 120
        while len(list_checkpoints(run)) < 2 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    k = load_checkpoint(run).step
    subprocess.run([sys.executable, "-m", "ddpm.cli", "train", "--out", str(run), "--resume", "--total_steps",
                    str(k + 2), "--no-progress"], check=True, env=env, cwd=REPO, capture_output=True, timeout=300)
    import csv

    with open(run / "log.csv", newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == list(range(1, k + 3))


def test_rerunning_the_quickstart_says_which_option_to_use(tmp_path, capsys):
    out = tmp_path / "qs"
    step = out / "run" / "checkpoints" / "step_000002500"
    step.mkdir(parents=True)
    (step / "meta.json").write_text("{}")
    assert main(["quickstart", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "--overwrite" in line and "step_000002500" in line
    assert (step / "meta.json").exists()
    from ddpm.cli import build_parser

    sub = build_parser().parse_args(["quickstart", "--out", str(out), "--overwrite"])
    assert sub.overwrite is True  # the option the message names exists


def test_a_run_written_by_another_trainer_meanwhile_is_refused(tmp_path):
    from ddpm.config import ConfigError, override, preset
    from ddpm.train import Trainer

    cfg = override(preset("digits"), base_channels=16, channel_mults=[1, 2], attn_resolutions=[4], num_groups=8,
                   T=20, batch_size=16, total_steps=2, checkpoint_every=2, sample_every=0)
    first = Trainer(cfg, tmp_path / "run", progress=False)   # prepared: no checkpoint there yet
    Trainer(cfg, tmp_path / "run", progress=False).run()     # another trainer writes the run meanwhile
    before = tree(tmp_path / "run")
    with pytest.raises(ConfigError, match="another ddpm train wrote it"):
        first.run()
    assert tree(tmp_path / "run") == before


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only filesystem needs root (CI runs as root)")
def test_a_read_only_out_is_one_line(ckpt, tmp_path, capsys):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        capsys.readouterr()
        for args in (train_args(mnt / "run"), ["sample", "--checkpoint", str(ckpt), "--out", str(mnt / "s"), "--n",
                                                "2", "--no-progress"]):
            assert main(args) == 2
            line = one_error_line(capsys)
            assert "Read-only file system" in line and str(mnt) in line
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_resuming_a_crafted_checkpoint_with_mis_shaped_weights_is_one_line(trained_run, tmp_path, capsys):
    from ddpm.checkpoint import save_checkpoint

    ckpt = load_checkpoint(trained_run)
    name = next(iter(ckpt.model))
    ckpt.model[name] = torch.zeros(3)  # hashes are recomputed on save: only the shape gives it away
    run = tmp_path / "run"
    save_checkpoint(run, ckpt)
    (run / "config.json").write_text((trained_run / "config.json").read_text())
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--total_steps", "6", "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert "do not fit" in line and name in line
