"""The trainer: the recipe's pieces, exact resumption, DDP equality, clear errors before any state changes."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpm.checkpoint import list_checkpoints, load_checkpoint
from ddpm.config import ConfigError, override, preset
from ddpm.train import EMA, NonFiniteError, lr_at, train
from ddpm.train.ema import ema_decay_at
from ddpm.train.trainer import batch_indices

# a tiny U-Net on the real digits data, T = 50: a few steps take a second
TINY = dict(base_channels=16, channel_mults=[1, 2], attn_resolutions=[4], num_groups=8, T=50, batch_size=16,
            warmup_steps=5, log_every=2, sample_every=0, checkpoint_every=3, total_steps=6, ema_decay=0.9)


def tiny(**changes):
    return override(preset("digits"), **{**TINY, **changes})


def test_warmup_is_linear_then_constant():
    assert lr_at(0, 2e-4, 5000) == pytest.approx(2e-4 / 5000)
    assert lr_at(2499, 2e-4, 5000) == pytest.approx(1e-4)
    assert lr_at(4999, 2e-4, 5000) == lr_at(10**6, 2e-4, 5000) == 2e-4


def test_ema_is_the_exponential_average():
    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = EMA(net, 0.9)
    for v in (1.0, 2.0):
        with torch.no_grad():
            net.weight.fill_(v)
        ema.update(net, updates=int(v))
    # 0 → 0.9·0 + 0.1·1 = 0.1 → 0.9·0.1 + 0.1·2 = 0.29
    assert ema.state_dict()["weight"].flatten().tolist() == pytest.approx([0.29, 0.29])


def test_warming_ema_is_the_weighted_average_its_decays_define_and_forgets_the_initial_weights():
    # brute force: after n updates with decays d_1..d_n the average is Σ_k θ_k (1 − d_k) Π_{j>k} d_j + θ_0 Π_j d_j
    decay, power, n = 0.99, 0.75, 40
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1000.0)  # the initial weights: with the warm-up they must not count at all
    ema, cold = EMA(net, decay, warmup_power=power), EMA(net, decay)
    thetas = torch.randn(n, dtype=torch.float64)
    for k in range(n):
        with torch.no_grad():
            net.weight.fill_(thetas[k].item())
        ema.update(net, updates=k + 1)
        cold.update(net, updates=k + 1)
    d = [ema_decay_at(k + 1, decay, power) for k in range(n)]
    assert d[0] == 0.0 and all(a <= b for a, b in zip(d, d[1:]))  # a copy first, then a growing decay
    expected = sum(thetas[k].item() * (1 - d[k]) * math.prod(d[k + 1:]) for k in range(n))
    assert ema.state_dict()["weight"].item() == pytest.approx(expected, rel=1e-5)
    # the same updates without warm-up still hold 0.99^40 = 67% of the initial 1000
    assert cold.state_dict()["weight"].item() > 600


def test_ema_warmup_reaches_the_papers_decay_well_before_its_800k_steps():
    assert ema_decay_at(10**6, 0.9999, None) == 0.9999
    assert ema_decay_at(1000, 0.9999, 0.75) == pytest.approx(1 - 1000 ** -0.75)  # 0.9944: still warming
    reached = next(n for n in (10**k for k in range(1, 7)) if ema_decay_at(n, 0.9999, 0.75) == 0.9999)
    assert reached == 10**6 and ema_decay_at(216_000, 0.9999, 0.75) == 0.9999  # from about 215k on
    assert ema_decay_at(214_000, 0.9999, 0.75) < 0.9999
    with pytest.raises(ValueError, match="from 1"):
        ema_decay_at(0, 0.9999, 0.75)


def test_batches_are_epoch_permutations():
    seen = torch.cat([batch_indices(s, 100, 10, seed=0) for s in range(10)])
    assert sorted(seen.tolist()) == list(range(100))
    assert not torch.equal(batch_indices(0, 100, 10, 0), batch_indices(10, 100, 10, 0))


def test_training_writes_logs_checkpoints_and_grids(tmp_path):
    cfg = tiny(sample_every=3, keep_checkpoints=1)
    result = train(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert result.step == 6 and len(result.losses) == 6 and all(map(lambda v: v == v, result.losses))
    assert [p.name for p in list_checkpoints(run)] == ["step_000000006"]  # keep the last 1
    rows = (run / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,loss_t_q1") and len(rows) == 4
    assert (run / "samples" / "step_000000006.png").exists()
    assert json.loads((run / "config.json").read_text()) == cfg.to_dict()
    assert any((run / "tensorboard").iterdir())
    ckpt = load_checkpoint(run)
    assert ckpt.step == 6 and ckpt.ema is not None and ckpt.optimizer is not None
    assert ckpt.extra["data_position"] == 6


# the importance sampler on T = 4: each t has its 10 losses after a few steps of 16, so the resumed half draws by
# importance from the restored history
IMPORTANCE = {"t_sampler": "loss-second-moment", "T": 4}


@pytest.mark.parametrize("extra", [{}, IMPORTANCE], ids=["uniform-t", "importance-t"])
def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path, extra):
    cfg = tiny(total_steps=8, checkpoint_every=4, dropout=0.1, **extra)
    full = train(cfg, tmp_path / "full", progress=False)
    first = train(override(cfg, total_steps=4), tmp_path / "split", progress=False)
    if extra:
        half = load_checkpoint(tmp_path / "split").tensors
        assert (half["t_sampler.counts"] >= 10).all() and half["t_sampler.counts"].sum() == 4 * 16
    rest = train(cfg, tmp_path / "split", resume=True, progress=False)
    assert rest.start_step == 4
    assert first.losses + rest.losses == full.losses
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "split")
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    assert all(torch.equal(a.ema[k], b.ema[k]) for k in a.ema)
    assert a.tensors.keys() == b.tensors.keys() and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_resuming_an_importance_run_without_its_t_sampler_state_is_refused(tmp_path):
    from ddpm.checkpoint import CheckpointError, save_checkpoint

    cfg = tiny(total_steps=2, checkpoint_every=2, **IMPORTANCE)
    train(cfg, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(tmp_path / "run")
    del ckpt.tensors["t_sampler.counts"]  # a checkpoint that lost half of the sampler's state
    save_checkpoint(tmp_path / "run", ckpt)
    with pytest.raises(CheckpointError, match="cannot resume its t-sampler: .* holds losses and counts"):
        train(override(cfg, total_steps=4), tmp_path / "run", resume=True, progress=False)


def test_errors_come_before_any_state_changes(tmp_path):
    run = tmp_path / "run"
    train(tiny(total_steps=3), run, progress=False)
    before = sorted(p.name for p in run.rglob("*"))
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny(total_steps=3), run, progress=False)
    with pytest.raises(ConfigError, match=r"train.lr \(checkpoint: 0.001\)"):
        train(tiny(total_steps=6, lr=5e-4), run, resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny(), tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        train(tiny(batch_size=4096), tmp_path / "big", progress=False)
    assert sorted(p.name for p in run.rglob("*")) == before
    assert not (tmp_path / "big").exists()


def test_non_finite_loss_stops_and_leaves_ema_and_checkpoint_intact(tmp_path, monkeypatch):
    from ddpm.train import trainer as trainer_mod

    run = tmp_path / "run"
    t = trainer_mod.Trainer(tiny(total_steps=6, checkpoint_every=2), run, progress=False)
    real = t.diffusion.training_losses
    calls = {"n": 0}

    def poisoned(model, x0, tt, noise, *rest):
        calls["n"] += 1
        terms = real(model, x0, tt, noise, *rest)
        if calls["n"] == 3:  # the third step's loss is NaN
            return type(terms)(terms.loss * float("nan"), terms.mse, terms.vlb_bpd, terms.t)
        return terms

    monkeypatch.setattr(t.diffusion, "training_losses", poisoned)
    with pytest.raises(NonFiniteError, match="step 2"):
        t.run()
    saved = load_checkpoint(run)
    assert saved.step == 2
    assert all(torch.equal(saved.ema[k], t.ema.state_dict()[k]) for k in saved.ema)  # EMA untouched by the bad step
    assert all(torch.equal(saved.model[k], t.net.state_dict()[k]) for k in saved.model)


def test_skip_policy_skips_non_finite_steps(tmp_path, monkeypatch):
    from ddpm.train import trainer as trainer_mod

    t = trainer_mod.Trainer(tiny(total_steps=4, nonfinite_policy="skip"), tmp_path / "run", progress=False)
    real = t.diffusion.training_losses
    monkeypatch.setattr(t.diffusion, "training_losses",
                        lambda *a: (lambda r: type(r)(r.loss * float("inf"), r.mse, r.vlb_bpd, r.t))(real(*a)))
    result = t.run()
    assert result.skipped_steps == 4 and result.step == 4


def test_bf16_autocast_trains_on_the_cpu(tmp_path):
    result = train(tiny(total_steps=3, bf16=True), tmp_path / "run", progress=False)
    assert all(torch.isfinite(torch.tensor(result.losses)))


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ddpm.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=300)


def _log_rows(run):
    """log.csv's rows as numbers, without the clock's columns."""
    with open(run / "log.csv", newline="") as f:
        return [{k: float(v) for k, v in r.items() if k not in ("wall_s", "img_per_s")} for r in csv.DictReader(f)]


# uniform t with flips: the flips are drawn for the global batch, one coin per example, whatever the processes
@pytest.mark.parametrize("extra", [{"random_flip": True}, {**IMPORTANCE, "total_steps": 8, "checkpoint_every": 8}],
                         ids=["uniform-t-flips", "importance-t"])
def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path, extra):
    common = ["train", "--preset", "digits", "--no-progress", "--device", "cpu"]
    overrides = []
    for k, v in {**TINY, "total_steps": 4, "checkpoint_every": 4, **extra}.items():
        overrides += [f"--{k}", ",".join(map(str, v)) if isinstance(v, list) else str(v)]
    one = _cli(*common, "--out", str(tmp_path / "one"), *overrides)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29517", "-m", "ddpm.cli", *common, "--out", str(tmp_path / "two"),
                          *overrides], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    assert b.extra["world_size"] == 2 and a.extra["world_size"] == 1
    # float summation order differs between one and two processes; Adam's first steps move each weight by about
    # ±lr·sign(g), so a weight whose true gradient is ~0 (e.g. attention key biases) may differ by ~lr. A bug
    # (unsynchronised gradients, different batches) moves nearly every weight by ~lr: the median tells them apart.
    diffs = torch.cat([(a.model[k] - b.model[k]).abs().flatten() for k in a.model])
    assert diffs.max() < 1e-4 and diffs.median() < 1e-7, (diffs.max(), diffs.median())
    ema_diffs = torch.cat([(a.ema[k] - b.ema[k]).abs().flatten() for k in a.ema])
    assert ema_diffs.max() < 1e-4 and ema_diffs.median() < 1e-7
    # log.csv averages the global batch's losses and t, not those of rank 0's share
    rows = [_log_rows(tmp_path / "one"), _log_rows(tmp_path / "two")]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] and rows[0]
    for r1, r2 in zip(*rows):
        assert r2 == pytest.approx(r1, rel=1e-4, nan_ok=True)
    if "t_sampler" in extra:  # it learnt every process's losses: the same t were drawn, the same losses seen
        assert torch.equal(a.tensors["t_sampler.counts"], b.tensors["t_sampler.counts"])
        assert (a.tensors["t_sampler.counts"] >= 10).all()  # it drew by importance in the last steps
        torch.testing.assert_close(a.tensors["t_sampler.losses"], b.tensors["t_sampler.losses"], rtol=1e-4, atol=1e-6)


def test_cli_refuses_a_batch_not_divisible_by_the_process_count(tmp_path):
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29518", "-m", "ddpm.cli", "train", "--preset", "digits", "--out", str(tmp_path / "r"),
                          "--batch_size", "15", "--device", "cpu"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode != 0
    assert "batch_size=15 is not divisible by the number of processes (2)" in res.stderr
    assert not Path(tmp_path / "r").exists()


def test_torch_compile_trains_on_the_cpu_like_eager(tmp_path):
    """--compile wraps the network in torch.compile (inductor, C++ on the CPU); the losses match eager."""
    eager = train(tiny(total_steps=2, log_every=1), tmp_path / "eager", progress=False)
    compiled = train(tiny(total_steps=2, log_every=1, compile=True), tmp_path / "compiled", progress=False)
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-3)


def test_one_backend_rule_and_one_way_in_and_out_of_the_processes(monkeypatch, tmp_path):
    from ddpm.processes import ProcessGroup, backend_for, joined
    from ddpm.train import Trainer

    assert backend_for(torch.device("cuda", 1)) == "nccl"
    assert backend_for(torch.device("cpu")) == backend_for(torch.device("mps")) == "gloo"
    with joined(torch.device("cpu")) as group:  # one process: no group to create or destroy
        assert group == ProcessGroup()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="needs its process group"):
        Trainer(tiny(), tmp_path / "run", progress=False)
