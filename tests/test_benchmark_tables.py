"""The benchmark scripts' own logic (run folders, run specs, the tables' statistics), training a few steps at most."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def table2() -> ModuleType:
    return _script("table2_digits")


def test_only_the_cells_trained_on_the_bound_get_an_importance_folder(table2: ModuleType, tmp_path: Path) -> None:
    assert table2.cell_dir(tmp_path, "eps", "fixed_beta", "vlb", "loss-second-moment").name == \
        "eps-fixed_beta-vlb-importance"
    assert table2.cell_dir(tmp_path, "eps", "fixed_beta", "vlb", "uniform").name == "eps-fixed_beta-vlb"
    # L_simple draws t uniformly whatever --t-sampler says: it shares the uniform run's folder
    assert table2.cell_dir(tmp_path, "eps", "fixed_beta", "simple", "loss-second-moment").name == \
        "eps-fixed_beta-simple"


def _cell(table2: ModuleType, label: str, per_image: list[float]):
    x = np.asarray(per_image)
    return table2.CellResult(label, False, 10, float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size)),
                             20.0, 10.0, 8.0, 9.0, 0.9, 1.0, 1.0, per_image)


def test_differences_to_l_simple_are_paired_over_the_same_images(table2: ModuleType) -> None:
    rng = np.random.default_rng(0)
    difficulty = rng.normal(3.0, 0.5, 180)  # shared by both cells: it cancels in the paired difference
    simple = difficulty + rng.normal(0, 0.01, 180)
    bound = difficulty - 0.05 + rng.normal(0, 0.01, 180)
    rows = [_cell(table2, table2.CELLS[4][0], bound.tolist()), _cell(table2, table2.CELLS[-1][0], simple.tolist())]
    lines = table2.paired_differences(rows)
    assert len(lines) == 1 and lines[0].startswith(f"- {table2.CELLS[4][0]} minus L_simple: ")
    d = bound - simple
    assert f"{d.mean():+.3f} ± {d.std(ddof=1) / math.sqrt(d.size):.3f} bits/dim" in lines[0]
    assert d.std(ddof=1) / math.sqrt(d.size) < 0.1 * rows[0].test_nll_stderr  # why pairing is worth it
    table = table2.markdown(rows, 10, 4)
    assert f"| {rows[0].test_nll_bits_per_dim:.3f} ± {rows[0].test_nll_stderr:.3f} |" in table
    assert lines[0] in table
    assert table2.paired_differences(rows[:1]) == []  # no L_simple cell: nothing to compare with


def test_a_likelihood_run_spec_is_a_preset_with_overrides() -> None:
    likelihood = _script("likelihood_digits")
    name, cfg = likelihood.parse_run("digits:beta_start=0.0025:total_steps=3000:schedule=linear")
    assert name == "digits_beta_start-0.0025_total_steps-3000_schedule-linear"
    assert (cfg.diffusion.beta_start, cfg.train.total_steps, cfg.diffusion.schedule) == (0.0025, 3000, "linear")
    assert likelihood.parse_run("digits-nll")[1].diffusion.beta_start == 0.0025


def test_bench_samplers_reports_the_spread_over_seeds_and_the_real_band() -> None:
    bench = _script("bench_samplers")
    row = bench.BenchRow("sde-dpm++2m", 20, 0.0, "logsnr", 256, (0, 1, 2), 1.0, 256.0, 12.0, 2.0, (10.0, 12.0, 14.0),
                         13.27, 2.79, 8.5, 9.2, 0.95, 0.98)
    table = bench.markdown([row])
    assert "mean ± sd of 3 seeds" in table and "| 12.00 ± 2.00 (13.27 ± 2.79) |" in table
    one = bench.BenchRow(*[*row.__dict__.values()][:5], (0,), 1.0, 256.0, 12.0, None, (12.0,), 13.27, 2.79,
                         8.5, 9.2, 0.95, 0.98)
    assert "| 12.00 (13.27 ± 2.79) |" in bench.markdown([one])


def test_bench_samplers_swaps_the_fixed_reverse_variance_and_refuses_a_learned_one() -> None:
    from ddpm.diffusion import GaussianDiffusion
    from ddpm.schedules import Schedule, linear_betas

    bench = _script("bench_samplers")
    d = GaussianDiffusion(Schedule.from_betas(linear_betas(10, 1e-3, 0.2)), var_type="fixed_beta", levels=17)
    assert bench.with_sigma2(d, "model") is d
    tilde = bench.with_sigma2(d, "beta-tilde")
    assert tilde.var_type == "fixed_beta_tilde" and tilde.schedule is d.schedule and tilde.levels == 17
    x, t = torch.zeros(2, 3), torch.tensor([4, 9])
    assert torch.equal(tilde.p_mean_var(lambda x, t: torch.zeros_like(x), x, t).log_var,
                       d.schedule.beta_tilde_log_clipped[t - 1, None].float().expand(2, 3))  # paper t
    learned = GaussianDiffusion(d.schedule, var_type="learned_range")
    with pytest.raises(SystemExit, match="this model learns Σ"):
        bench.with_sigma2(learned, "beta")


def test_conditional_step_alternates_two_resumed_runs(tmp_path: Path) -> None:
    step = _script("conditional_step")
    rates = step.measure(tmp_path, chunks=2, chunk_steps=2)
    assert set(rates) == {"unconditional", "class-conditional"}
    assert all(len(r) == 2 and min(r) > 0 for r in rates.values())  # one log row per chunk: each run resumed once
