"""Evaluation over several processes: shares, rank 0's one-process work (``on_main``), errors on one rank, and
torchrun runs that must write exactly what one process writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from _eval_tiny import REPO, make_checkpoint, one_thread, run_cli  # noqa: F401 (autouse fixture)
from ddpm.cli import main
from ddpm.config import ConfigError
from ddpm.evaluation.fid import load_npz_images
from ddpm.evaluation.parallel import shard, shard_bounds
from ddpm.processes import ProcessGroup, device_for


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("par") / "ckpt", T=6)


@pytest.fixture(scope="module")
def class_ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("par_c") / "ckpt", T=6, num_classes=10, label_dropout=0.1)


# --- shares and rank 0's work, in one process ----------------------------------------------------------------

@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_shares_cover_every_item_once_in_order(world_size):
    for n in range(0, 12):
        bounds = [shard_bounds(n, r, world_size) for r in range(world_size)]
        assert [i for a, b in bounds for i in range(a, b)] == list(range(n))  # contiguous, in rank order
        sizes = [b - a for a, b in bounds]
        assert max(sizes) - min(sizes) <= 1
    assert list(shard(range(5), ProcessGroup(1, 2))) == [3, 4]
    with pytest.raises(ValueError, match="rank 2 is outside 0..1"):
        shard_bounds(4, 2, 2)


def test_on_main_in_one_process_is_the_call_itself():
    from ddpm.evaluation.parallel import on_main

    assert on_main(lambda: 41 + 1, ProcessGroup()) == 42
    with pytest.raises(ConfigError, match="bad"):
        on_main(lambda: (_ for _ in ()).throw(ConfigError("bad")), ProcessGroup())


# --- errors on one rank -------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks_without_torchrun(args: list[str], timeout: float = 60) -> list[subprocess.CompletedProcess]:
    """Two ``python -m ddpm.cli`` processes given torchrun's environment by hand (as srun or a job script would):
    no elastic agent stops one when the other fails."""
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "ddpm.cli", *args], env=env, cwd=REPO, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL))
    deadline, done = time.monotonic() + timeout, []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    except subprocess.TimeoutExpired:
        pytest.fail(f"a rank still runs {timeout:.0f} s after the start: it waits for a rank that has failed")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return done


def test_an_out_refused_on_rank_0_stops_every_rank_with_its_line(ckpt, tmp_path):
    """check_output_dir runs on rank 0 only; without on_main rank 1 went on to its share and then waited for rank 0
    in the gather (up to the hour-long evaluation timeout) or died on a broken connection as an internal error."""
    out = tmp_path / "taken"
    out.mkdir()
    (out / "other.txt").write_text("someone else's\n")
    ranks = _two_ranks_without_torchrun(["nll", "--checkpoint", str(ckpt), "--out", str(out), "--limit", "2",
                                         "--no-progress"])
    for r in ranks:
        assert r.returncode == 2, r.stderr[-2000:]
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("ddpm nll: error: --out ") and "already holds" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["other.txt"]


# --- work that runs on rank 0 alone -------------------------------------------------------------------------

_RECORD_WRITES = """
import os, sys
import ddpm.evaluation.analytic_variance as av
from ddpm.cli import main

log = sys.argv[1]
real = av.write_estimate

def write_estimate(*a, **k):  # which rank writes the estimate beside the checkpoint
    with open(log, "a") as f:
        f.write(os.environ["RANK"] + "\\n")
    return real(*a, **k)

av.write_estimate = write_estimate
sys.exit(main(sys.argv[2:]))
"""


def _torchrun_script(script: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``script ARGS`` under torchrun with 2 gloo processes (one ddpm command per launch: a process group left
    and joined again in the same processes does not reconnect reliably)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("command", ["analytic-variance", "nll"])
def test_the_analytic_variance_estimate_is_written_by_rank_0_alone(ckpt, tmp_path, command):
    """Under torchrun every rank used to compute Γ and write the same two files beside the checkpoint (racing:
    on a GPU their bytes may differ, leaving a JSON whose sha256 names the other rank's tensor file); rank 0
    alone writes the Γ every rank holds."""
    script, log, out = tmp_path / "record.py", tmp_path / "writes.txt", tmp_path / "nll"
    script.write_text(_RECORD_WRITES)
    if command == "nll":
        args = ["nll", "--checkpoint", str(ckpt), "--out", str(out), "--limit", "3", "--variance", "analytic",
                "--n-images", "3", "--recompute", "--no-progress"]
    else:
        args = ["analytic-variance", "--checkpoint", str(ckpt), "--n-images", "3", "--batch-size", "2", "--recompute"]
    proc = _torchrun_script(script, str(log), *args)
    assert log.read_text().split() == ["0"]
    if command == "nll":
        summary = json.loads((out / "nll.json").read_text())
        assert summary["variance"] == "analytic" and summary["n_images"] == 3
    else:
        printed = [ln for ln in proc.stdout.splitlines() if ln.startswith("Gamma_t")]
        assert len(printed) == 1  # rank 0 prints the estimate every rank holds


_RECORD_SHARES = """
import os, sys
import ddpm.evaluation.analytic_variance as av
from ddpm.cli import main

log = sys.argv[1]
real = av.gamma_sums

def gamma_sums(model, diffusion, x0, *a, **k):  # which rank computes how many images
    with open(log, "a") as f:
        f.write(f"{os.environ['RANK']} {x0.shape[0]}\\n")
    return real(model, diffusion, x0, *a, **k)

av.gamma_sums = gamma_sums
sys.exit(main(sys.argv[2:]))
"""


def test_the_analytic_variance_estimate_is_shared_out_and_equals_one_processes(ckpt, tmp_path):
    """Γ over 2 processes: each computes its share of the batches (rank 0 used to compute all of them while the
    others waited), and the stored estimate is byte for byte what one process stores."""
    script, log = tmp_path / "shares.py", tmp_path / "shares.txt"
    script.write_text(_RECORD_SHARES)
    args = ["analytic-variance", "--checkpoint", str(ckpt), "--n-images", "5", "--batch-size", "2", "--recompute"]
    _torchrun_script(script, str(log), *args)
    shares = sorted(tuple(map(int, ln.split())) for ln in log.read_text().splitlines())
    assert shares == [(0, 2), (0, 2), (1, 1)], shares  # batches [0, 1], [2, 3] on rank 0, [4] on rank 1
    tensor = next(ckpt.parent.glob(f"{ckpt.name}.analytic-*.safetensors"))
    two = tensor.read_bytes()
    assert main(args) == 0
    assert tensor.read_bytes() == two


# --- torchrun writes what one process writes ----------------------------------------------------------------

def _same_files(one: Path, two: Path, names: list[str]) -> None:
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


@pytest.mark.parametrize("command, extra, files", [
    ("sample", ["--num-samples", "3", "--limit", "1", "--class", "all", "--guidance", "1", "--steps", "2"],
     ["samples.npz", "samples.png"]),
    ("progressive", ["--rows", "3", "--share-images", "1", "--share-t", "6,3,1", "--share-samples", "1"],
     ["progressive.npz", "shared_xt.npz"]),
])
def test_class_conditional_outputs_on_two_processes_equal_one(class_ckpt, tmp_path, command, extra, files):
    """A class-conditional model, --limit and an odd row count over 2 gloo processes: the same bytes as 1."""
    args = [command, "--checkpoint", str(class_ckpt), "--no-progress", "--batch-size", "2", *extra]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--out", str(one)]) == 0
    run_cli(*args, "--out", str(two), nproc=2)
    _same_files(one, two, files)
    assert json.loads((two / "args.json").read_text())["world_size"] == 2
    if command == "sample":
        with np.load(two / "samples.npz") as z:  # --limit 1 of each of the 10 classes: 5 per process
            assert z["images"].shape == (10, 8, 8, 1) and z["labels"].tolist() == list(range(10))
    else:
        with np.load(two / "shared_xt.npz") as z:  # Fig. 7: 3 rows (one image, three t) over 2 processes
            assert z["images"].shape[:2] == (3, 3)


# --- fid ---------------------------------------------------------------------------------------------------

def test_load_npz_images_names_the_option_that_gave_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^--samples .*missing\.npz does not exist$"):
        load_npz_images(tmp_path / "missing.npz", "--samples")
    with pytest.raises(FileNotFoundError, match=r"^image file .*missing\.npz does not exist$"):
        load_npz_images(tmp_path / "missing.npz")


def test_fid_names_the_samples_option_of_a_missing_file(ckpt, tmp_path, capsys):
    assert main(["fid", "--samples", str(tmp_path / "missing.npz"), "--checkpoint", str(ckpt),
                 "--out", str(tmp_path / "fid")]) == 2
    assert "--samples" in capsys.readouterr().err


# --- the device of each rank --------------------------------------------------------------------------------

def test_cuda_under_torchrun_needs_a_gpu_per_process(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device_for("cuda", 1) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="--device"):
        device_for("cuda", 2)  # LOCAL_RANK 2 of --nproc_per_node 3 on a 2-GPU machine


def test_one_named_gpu_for_every_process_is_refused_under_torchrun(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert device_for("cuda:1") == torch.device("cuda", 1)  # one process may pick its GPU
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="--device cuda:1 would put every process on one GPU"):
        device_for("cuda:1", 1)
