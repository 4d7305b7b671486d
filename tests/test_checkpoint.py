"""Checkpoints: exact round trips, resumable optimizer and RNG state, pruning, atomicity, safety."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from torch import nn

from ddpm.checkpoint import (
    FORMAT_NAME,
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    inspect_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    safe_torch_load,
    save_checkpoint,
    save_model,
)
from ddpm.config import RunConfig, preset
from ddpm.outputs import OutputError

WRITER = Path(__file__).with_name("_ckpt_writer.py")
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def assert_same(a: Any, b: Any, where: str = "root") -> None:
    """Exact equality: same types, same key order, same dtypes and shapes, same bits (NaN included)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), f"{where}: {a.dtype, a.shape} != {b.dtype, b.shape}"
        if a.is_floating_point():  # compare bit patterns so NaN payloads and -0.0 count too
            a, b = (t.contiguous().view(_INT_OF_SIZE[t.element_size()]) for t in (a, b))
        assert torch.equal(a, b), f"{where}: values differ"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _full_checkpoint(step: int = 7) -> Checkpoint:
    """A checkpoint using every field, with many dtypes and awkward optimizer structure."""
    g = torch.Generator().manual_seed(step)
    model = {
        "f32": torch.randn(3, 4, generator=g),
        "f64": torch.randn(5, generator=g, dtype=torch.float64),
        "bf16": torch.randn(2, 3, generator=g).to(torch.bfloat16),
        "f16": torch.tensor([1.5, -0.0, float("inf"), float("nan"), 6.1e-5], dtype=torch.float16),
        "i64": torch.tensor([-(2**62), 0, 2**62 + 1], dtype=torch.int64),
        "i32": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "bool": torch.tensor([[True, False], [False, True]]),
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 4),
    }
    optimizer = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(3, 4, generator=g)},
                  2: {"step": torch.tensor(3.0), "momentum": None}},
        "param_groups": [
            {"params": [0, 2], "lr": 2e-4, "betas": (0.9, 0.999), "eps": 1e-8, "foreach": None,
             "amsgrad": False, "max_lr": float("inf"), "tensor_lr": torch.tensor(0.01, dtype=torch.float64)},
            {"params": [], "lr": 1, "nested": {"__tuple__": [1, 2]}, "list_of_tuples": [(1, "a"), ()]},
        ],
    }
    return Checkpoint(
        step=step,
        config=preset("digits").to_dict(),
        model=model,
        ema={k: v.clone() for k, v in model.items() if v.is_floating_point()},
        optimizer=optimizer,
        tensors={"torch_rng": torch.get_rng_state(), "gen_rng": g.get_state()},
        extra={"data": {"epoch": 2, "index": 1234, "order_seed": 5}, "note": "ünïcode", "vals": [1.5, None]},
    )


# --- round trips -------------------------------------------------------------------------------

def test_round_trip_is_exact(tmp_path: Path) -> None:
    ckpt = _full_checkpoint()
    path = save_checkpoint(tmp_path, ckpt)
    assert path == tmp_path / "checkpoints" / "step_000000007"
    loaded = load_checkpoint(path)
    for name in ("step", "config", "model", "ema", "optimizer", "tensors", "extra"):
        assert_same(getattr(ckpt, name), getattr(loaded, name), name)
    assert RunConfig.from_dict(loaded.config) == preset("digits")
    assert_same(load_checkpoint(tmp_path).model, ckpt.model)  # the run dir resolves to its latest
    assert load_checkpoint(tmp_path / "checkpoints").step == 7


def test_directory_is_self_describing_and_pickle_free(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, _full_checkpoint(), keep=1)
    names = sorted(p.name for p in path.iterdir())
    assert names == ["ema.safetensors", "meta.json", "model.safetensors", "optimizer.safetensors",
                     "state.safetensors"]
    meta = json.loads((path / "meta.json").read_text())
    assert (meta["format"], meta["version"], meta["step"]) == (FORMAT_NAME, FORMAT_VERSION, 7)
    assert meta["config"] == preset("digits").to_dict()
    assert meta["optimizer"]["param_groups"][0]["betas"] == {"__tuple__": [0.9, 0.999]}
    for name, info in meta["files"].items():
        assert info["sha256"] == hashlib.sha256((path / name).read_bytes()).hexdigest()
        safetensors.torch.load_file(str(path / name))  # every tensor file is plain safetensors


def test_shared_and_non_contiguous_tensors(tmp_path: Path) -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    model = {
        "weight": base,
        "tied": base,                        # the same tensor twice (tied weights)
        "transposed": base.t(),              # non-contiguous view of the same storage
        "row": base[1],                      # contiguous view into the same storage
        "cols": base[:, 2:4],                # non-contiguous slice
        "expanded": torch.ones(3, 1).expand(3, 5),  # stride 0
    }
    param = nn.Parameter(torch.randn(2, 2))
    model["param"] = param  # requires grad: must be detached, not refused
    loaded = load_checkpoint(save_checkpoint(tmp_path, Checkpoint(step=1, config={}, model=model)))
    for k, v in model.items():
        assert_same(v.detach().contiguous(), loaded.model[k], k)
    assert torch.equal(base, torch.arange(24, dtype=torch.float32).reshape(4, 6))  # inputs untouched


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    """A few optimizer steps on fixed random regression data."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 4, generator=g)
        y = torch.randn(16, 2, generator=g)
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _net_and_adam(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.Adam(
        [{"params": net[0].parameters()}, {"params": net[2].parameters(), "lr": 5e-3}],
        lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-3, amsgrad=True,
    )
    return net, opt


def test_adam_resume_is_bit_identical(tmp_path: Path) -> None:
    net, opt = _net_and_adam(seed=0)
    _train(net, opt, steps=3, seed=1)
    save_checkpoint(tmp_path, Checkpoint(step=3, config={}, model=net.state_dict(),
                                         optimizer=opt.state_dict()))
    loaded = load_checkpoint(tmp_path)
    assert_same(opt.state_dict(), loaded.optimizer, "optimizer")  # int ids, tuples, 0-dim step tensors

    net2, opt2 = _net_and_adam(seed=99)  # different initial weights, fresh optimizer state
    for group in opt2.param_groups:
        group["lr"] = 0.5  # must be overwritten by the checkpoint
    net2.load_state_dict(loaded.model)
    opt2.load_state_dict(loaded.optimizer)

    _train(net, opt, steps=4, seed=2)
    _train(net2, opt2, steps=4, seed=2)
    assert_same(net.state_dict(), net2.state_dict(), "weights after resuming")
    assert_same(opt.state_dict(), opt2.state_dict(), "optimizer after resuming")


def test_rng_states_reproduce_draws(tmp_path: Path) -> None:
    torch.manual_seed(123)
    torch.rand(5)
    gen = torch.Generator().manual_seed(456)
    torch.randn(3, generator=gen)
    tensors = {"torch": torch.get_rng_state(), "gen": gen.get_state()}
    save_checkpoint(tmp_path, Checkpoint(step=1, config={}, model={}, tensors=tensors))
    expected_global, expected_gen = torch.rand(10), torch.randn(10, generator=gen)

    loaded = load_checkpoint(tmp_path).tensors
    assert loaded["torch"].dtype == torch.uint8
    torch.set_rng_state(loaded["torch"])
    gen2 = torch.Generator()
    gen2.set_state(loaded["gen"])
    assert torch.equal(torch.rand(10), expected_global)
    assert torch.equal(torch.randn(10, generator=gen2), expected_gen)


def test_save_model_writes_a_model_only_checkpoint(tmp_path: Path) -> None:
    state = {"w": torch.randn(3, 3), "b": torch.zeros(3)}
    cfg = preset("toy2d").to_dict()
    out = save_model(tmp_path / "converted", cfg, state)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "model.safetensors"]
    loaded = load_checkpoint(out)
    assert (loaded.step, loaded.ema, loaded.optimizer, loaded.tensors) == (0, None, None, {})
    assert loaded.config == cfg
    assert_same(state, loaded.model)
    with pytest.raises(OutputError, match="--overwrite"):  # an existing checkpoint is replaced only when asked
        save_model(out, cfg, {"w": torch.ones(1)})
    assert_same(state, load_checkpoint(out).model)
    save_model(out, cfg, {"w": torch.ones(1)}, overwrite=True)
    assert list(load_checkpoint(out).model) == ["w"]
    assert [p.name for p in tmp_path.iterdir()] == ["converted"]


def test_unstorable_input_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="optimizer/param_groups/0/fn"):
        save_checkpoint(tmp_path, Checkpoint(step=1, config={}, model={},
                                             optimizer={"param_groups": [{"fn": print}]}))
    with pytest.raises(CheckpointError, match="extra"):
        save_checkpoint(tmp_path, Checkpoint(step=1, config={}, model={}, extra={"loss": float("nan")}))
    with pytest.raises(CheckpointError, match="model"):
        save_checkpoint(tmp_path, Checkpoint(step=1, config={}, model={"x": [1.0]}))
    with pytest.raises(CheckpointError, match="step"):
        save_checkpoint(tmp_path, Checkpoint(step=-1, config={}, model={}))
    assert list((tmp_path / "checkpoints").iterdir()) == []


# --- listing, pruning, replacing ---------------------------------------------------------------

def _tiny(step: int, value: float | None = None) -> Checkpoint:
    value = float(step if value is None else value)
    return Checkpoint(step=step, config={}, model={"w": torch.full((4,), value)})


def _steps(run: Path) -> list[int]:
    return [int(p.name.removeprefix("step_")) for p in list_checkpoints(run)]


def test_keep_prunes_to_the_newest(tmp_path: Path) -> None:
    for step in range(1, 6):
        save_checkpoint(tmp_path, _tiny(step), keep=2)
    assert _steps(tmp_path) == [4, 5]
    save_checkpoint(tmp_path, _tiny(6))  # keep=None keeps everything
    assert _steps(tmp_path) == [4, 5, 6]
    save_checkpoint(tmp_path, _tiny(2), keep=2)  # the checkpoint just written is never pruned
    assert _steps(tmp_path) == [2, 6]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_000000006"
    with pytest.raises(CheckpointError, match="keep"):
        save_checkpoint(tmp_path, _tiny(7), keep=0)
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert left == ["step_000000002", "step_000000006"]


def test_same_step_is_replaced(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _tiny(3, value=1.0))
    save_checkpoint(tmp_path, _tiny(3, value=2.0))
    assert _steps(tmp_path) == [3]
    assert torch.equal(load_checkpoint(tmp_path).model["w"], torch.full((4,), 2.0))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000000003"]


def _dead_pid() -> int:
    """The id of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_partial_directories_are_ignored_then_cleaned(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _tiny(1))
    ckdir = tmp_path / "checkpoints"
    dead, live = _dead_pid(), os.getppid()
    for name in (f".tmp-step_000000009-{dead}", f".old-step_000000004-{dead}", f".tmp-step_000000008-{live}"):
        (ckdir / name).mkdir()
        (ckdir / name / "model.safetensors").write_bytes(b"partial")
    (ckdir / "step_000000005").mkdir()  # a step directory without meta.json is not complete
    assert _steps(tmp_path) == [1]
    assert load_checkpoint(tmp_path).step == 1
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(ckdir / "step_000000005")

    save_checkpoint(tmp_path, _tiny(2))
    left = sorted(p.name for p in ckdir.iterdir())
    # a dead writer's leftovers go; a live process's may be a save in progress and stay
    assert left == [f".tmp-step_000000008-{live}", "step_000000001", "step_000000002", "step_000000005"]


# --- atomicity ---------------------------------------------------------------------------------

def _check_writer_checkpoint(path: Path, n: int) -> int:
    """Load a checkpoint of tests/_ckpt_writer.py, check it is whole and self-consistent; its step."""
    ckpt = load_checkpoint(path)
    step = ckpt.step
    assert path.name == f"step_{step:09d}"
    base = torch.arange(n, dtype=torch.float32)
    assert torch.equal(ckpt.model["w"], base + step)
    assert torch.equal(ckpt.ema["w"], base - step)
    assert torch.equal(ckpt.model["b"], torch.full((7,), step, dtype=torch.int64))
    assert ckpt.optimizer == {"state": {0: {"step": torch.tensor(float(step))}},
                              "param_groups": [{"params": [0]}]}
    assert ckpt.extra == {"step": step}
    return step


def test_sigkill_during_saves_leaves_latest_loadable(tmp_path: Path) -> None:
    n = 4_000_000  # 16 MB per tensor: a save takes long enough for kills to land inside it
    run = tmp_path / "run"
    rng = random.Random(20200619)
    previous, interrupted = -1, 0
    for delay in (0.0, 0.02, 0.05, 0.1, 0.2, 0.35):
        latest = latest_checkpoint(run)
        first = 0 if latest is None else load_checkpoint(latest).step + 1
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        proc = subprocess.Popen([sys.executable, str(WRITER), str(run), str(first), str(n), "2"],
                                stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == str(first), "the writer did not save its first step"
            time.sleep(delay + rng.uniform(0.0, 0.05))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        names = [p.name for p in (run / "checkpoints").iterdir()]
        interrupted += any(name.startswith(".") for name in names)  # killed inside a save
        complete = list_checkpoints(run)
        assert complete and all(p.name.startswith("step_") for p in complete)
        steps = [_check_writer_checkpoint(p, n) for p in complete]
        assert steps == sorted(steps) and len(steps) <= 3
        assert load_checkpoint(run).step == steps[-1] >= max(previous, first)
        previous = steps[-1]
    assert interrupted >= 1, "no kill landed inside a save: the test did not exercise partial writes"
    save_checkpoint(run, _tiny(previous + 1), keep=1)  # the next save removes the dead writers' leftovers
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"step_{previous + 1:09d}"]


class _DiskError(OSError):
    """The injected failure."""


def _count_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    calls = []
    real = os.fsync
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
        save_checkpoint(tmp_path / "count", _full_checkpoint(2))
    return len(calls)


def _assert_previous_intact(run: Path, expected: Checkpoint) -> None:
    assert_same(load_checkpoint(run / "checkpoints" / "step_000000001").model, expected.model)
    assert all(not p.name.startswith(".tmp") for p in (run / "checkpoints").iterdir())
    for path in list_checkpoints(run):
        load_checkpoint(path)  # whatever is listed is whole


def test_failing_fsync_anywhere_propagates_and_keeps_previous(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    total = _count_fsyncs(tmp_path, monkeypatch)
    assert total >= 7  # 4 tensor files, meta.json, the new directory, the checkpoints directory
    previous = _full_checkpoint(1)
    for fail_at in range(total):
        run = tmp_path / f"run{fail_at}"
        save_checkpoint(run, previous)
        calls = []
        err = _DiskError(errno.EIO, "injected I/O error")

        def fsync(fd: int, calls: list = calls, fail_at: int = fail_at, err: OSError = err) -> None:
            calls.append(fd)
            if len(calls) - 1 == fail_at:
                raise err

        with monkeypatch.context() as m:
            m.setattr(os, "fsync", fsync)
            with pytest.raises(_DiskError) as info:
                save_checkpoint(run, _full_checkpoint(2), keep=1)
        assert info.value is err  # propagated as is
        _assert_previous_intact(run, previous)


def test_disk_full_mid_file_propagates_and_keeps_previous(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    previous = _full_checkpoint(1)
    save_checkpoint(tmp_path, previous)
    real_save = safetensors.torch.save_file
    err = _DiskError(errno.ENOSPC, "No space left on device")

    def save_file(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        if filename.endswith("optimizer.safetensors"):
            real_save(tensors, filename, metadata)
            with open(filename, "r+b") as f:
                f.truncate(os.path.getsize(filename) // 2)  # half of it reached the disk
            raise err
        real_save(tensors, filename, metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    with pytest.raises(_DiskError) as info:
        save_checkpoint(tmp_path, _full_checkpoint(2))
    assert info.value is err
    assert _steps(tmp_path) == [1]
    _assert_previous_intact(tmp_path, previous)


def test_failing_rename_propagates_and_keeps_previous(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    previous = _full_checkpoint(1)
    save_checkpoint(tmp_path, previous)
    err = _DiskError(errno.EIO, "rename failed")
    monkeypatch.setattr(os, "rename", lambda *a: (_ for _ in ()).throw(err))
    with pytest.raises(_DiskError) as info:
        save_checkpoint(tmp_path, _full_checkpoint(2), keep=1)
    assert info.value is err
    monkeypatch.undo()
    assert _steps(tmp_path) == [1]
    _assert_previous_intact(tmp_path, previous)


def test_failing_replace_restores_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    previous = _full_checkpoint(1)
    save_checkpoint(tmp_path, previous)
    real_rename, calls = os.rename, []
    err = _DiskError(errno.EIO, "second rename failed")

    def rename(src: Any, dst: Any) -> None:
        calls.append((src, dst))
        if len(calls) == 2:  # the old checkpoint is already moved aside; the new one fails to move in
            raise err
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    replacement = _full_checkpoint(1)
    replacement.model = {"w": torch.zeros(2)}
    with pytest.raises(_DiskError) as info:
        save_checkpoint(tmp_path, replacement)
    assert info.value is err
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000000001"]
    _assert_previous_intact(tmp_path, previous)


# --- validation on load ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors", "optimizer.safetensors",
                                  "state.safetensors"])
def test_flipped_byte_is_named(tmp_path: Path, name: str) -> None:
    path = save_checkpoint(tmp_path, _full_checkpoint())
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2 + 3] ^= 0x01
    (path / name).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.") + ".*corrupt"):
        load_checkpoint(tmp_path)


def test_missing_or_truncated_tensor_file_is_named(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, _full_checkpoint())
    with open(path / "ema.safetensors", "r+b") as f:
        f.truncate(100)
    with pytest.raises(CheckpointError, match=r"ema\.safetensors"):
        load_checkpoint(path)
    (path / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing ema\.safetensors"):
        load_checkpoint(path)


def test_truncated_meta_json(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, _full_checkpoint())
    text = (path / "meta.json").read_text()
    (path / "meta.json").write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match=r"meta\.json.*not valid JSON"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": FORMAT_VERSION + 1}, "newer"),
        ({"version": 0}, "unknown format version"),
        ({"version": "1"}, "unknown format version"),
        ({"format": "something-else"}, "not a 'ddpm-checkpoint'"),
        ({"step": 8}, "named step_000000007"),
        ({"files": {"../../etc/passwd": {"sha256": "0" * 64}}}, "unknown files"),
    ],
)
def test_bad_meta_is_refused(tmp_path: Path, change: dict, message: str) -> None:
    path = save_checkpoint(tmp_path, _full_checkpoint())
    meta = json.loads((path / "meta.json").read_text())
    meta.update(change)
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


@pytest.mark.parametrize("names", [[1, "x"], [{"a": 1}, "x"], "1x", ["x", "x"], ["y"] * 100_000],
                         ids=["int", "dict", "a_string", "duplicate", "100k_names"])
def test_tensor_names_in_meta_json_must_be_strings(tmp_path: Path, names: Any) -> None:
    """meta.json is not hashed: a crafted names list [1, "x"] sorted against str keys was a TypeError."""
    path = save_checkpoint(tmp_path, Checkpoint(step=0, config={}, model={"w": torch.ones(1)},
                                                tensors={"1": torch.zeros(1), "x": torch.zeros(1)}))
    meta = json.loads((path / "meta.json").read_text())
    meta["files"]["state.safetensors"]["names"] = names
    (path / "meta.json").write_text(json.dumps(meta))
    for read in (load_checkpoint, inspect_checkpoint):
        with pytest.raises(CheckpointError, match=r"state\.safetensors") as e:
            read(path)
        assert len(str(e.value)) < 400  # not the 100,000 names


def test_run_dir_without_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    assert list_checkpoints(tmp_path) == [] and latest_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere")


# --- foreign weight files ----------------------------------------------------------------------

class _Payload:
    """Unpickling this runs a shell command: the classic malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "torch.save-legacy", "pickle-2", "pickle-4"])
def test_safe_torch_load_refuses_malicious_pickle(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    obj = {"weight": torch.ones(2), "evil": _Payload(marker)}
    path = tmp_path / "model.bin"
    if writer == "torch.save":
        torch.save(obj, path)
    elif writer == "torch.save-legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=int(writer[-1]))
    with pytest.raises(CheckpointError, match="objects other than tensors and was not loaded"):
        safe_torch_load(path)
    assert not marker.exists()


def test_the_malicious_payload_is_live(tmp_path: Path) -> None:
    """Control: plain unpickling of the same payload does run it, so the refusal above is what saves us."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"evil": _Payload(marker)}, f, protocol=2)
    code = f"import pickle; pickle.load(open({str(path)!r}, 'rb'))"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert marker.exists()


def test_safe_torch_load_reads_real_weights(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    loaded = safe_torch_load(tmp_path / "weights.pt")
    assert_same(dict(net.state_dict()), loaded)
    safetensors.torch.save_file({"a": torch.ones(2)}, str(tmp_path / "w.safetensors"))
    assert torch.equal(safe_torch_load(tmp_path / "w.safetensors")["a"], torch.ones(2))
    torch.save({"epoch": 3, "state_dict": net.state_dict()}, tmp_path / "nested.pt")
    with pytest.raises(CheckpointError, match="non-tensor entries"):
        safe_torch_load(tmp_path / "nested.pt")
    (tmp_path / "junk.bin").write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="junk.bin"):
        safe_torch_load(tmp_path / "junk.bin")
