"""Table 2 of the paper in miniature on the embedded digits: six parameterization/objective cells, one budget.

    python benchmarks/table2_digits.py --out runs/table2 [--steps 1500] [--samples 256]

Each cell trains the `digits` preset with the same seed, steps and recipe, changing only what the network
predicts (μ̃ or ε), its variance (learned diagonal Σ or fixed σ² = β) and the objective (true bound L, μ̃-MSE,
L_simple). Reported per cell: the test bits/dim (full bound, Table 1's NLL column), the digits Fréchet distance
and classifier score of ancestral samples (Algorithm 2, all T steps) beside the real-vs-real baseline, and
whether training diverged (a NaN/Inf loss stops it: the cell is flagged and evaluated at its last checkpoint,
if any). Prints a markdown table and writes it, with the date and machine, to OUT/table2.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ddpm.checkpoint import latest_checkpoint
from ddpm.config import override, preset
from ddpm.data import dataset_for
from ddpm.evaluation.common import mean_and_stderr
from ddpm.evaluation.digits_metric import evaluate_digits
from ddpm.evaluation.nll import bound_totals
from ddpm.loading import load_model
from ddpm.processes import machine_line
from ddpm.rng import per_item
from ddpm.sampling import sample
from ddpm.train import NonFiniteError, train
from ddpm.train.t_sampling import T_SAMPLERS

# (label as in Table 2, mean_type, var_type, loss_type)
CELLS = [
    ("μ̃ prediction, L, learned diagonal Σ", "mu", "learned", "vlb"),
    ("μ̃ prediction, L, fixed isotropic Σ", "mu", "fixed_beta", "vlb"),
    ("μ̃ prediction, ‖μ̃ − μ̃_θ‖²", "mu", "fixed_beta", "mu_mse"),
    ("ε prediction, L, learned diagonal Σ", "eps", "learned", "vlb"),
    ("ε prediction, L, fixed isotropic Σ", "eps", "fixed_beta", "vlb"),
    ("ε prediction, ‖ε̃ − ε_θ‖² (L_simple)", "eps", "fixed_beta", "simple"),
]


@dataclass
class CellResult:
    """One row of the table."""

    cell: str
    diverged: bool
    steps_done: int
    test_nll_bits_per_dim: float
    test_nll_stderr: float
    fd: float
    fd_real_vs_real: float
    class_score: float
    class_score_real: float
    confidence: float
    train_s: float
    eval_s: float
    test_nll_per_image: list[float] = field(default_factory=list)  # the same 180 test images in every cell


def cell_dir(out: Path, mean_type: str, var_type: str, loss_type: str, t_sampler: str) -> Path:
    """A cell's run folder; a cell trained on L with importance-sampled t has its own."""
    importance = loss_type == "vlb" and t_sampler != "uniform"
    return out / (f"{mean_type}-{var_type}-{loss_type}" + ("-importance" if importance else ""))


def run_cell(out: Path, label: str, mean_type: str, var_type: str, loss_type: str, steps: int, n_samples: int,
             seed: int, ema_decay: float | None = None, weights: str = "ema",
             t_sampler: str = "uniform") -> CellResult:
    """Train one cell with the shared budget and evaluate its EMA (or raw) weights; ``t_sampler`` is how the
    cells trained on the bound L draw t (the others draw it uniformly, as L_simple's weighting is its own)."""
    changes = dict(mean_type=mean_type, var_type=var_type, loss_type=loss_type, total_steps=steps,
                   checkpoint_every=max(1, steps // 5), seed=seed)
    if ema_decay is not None:
        changes["ema_decay"] = ema_decay
    if loss_type == "vlb":
        changes["t_sampler"] = t_sampler
    cfg = override(preset("digits"), **changes)
    run_dir = cell_dir(out, mean_type, var_type, loss_type, cfg.train.t_sampler)
    tick = time.perf_counter()
    diverged = False
    try:
        train(cfg, run_dir, resume=latest_checkpoint(run_dir) is not None, progress=False)
    except NonFiniteError:
        diverged = True
    train_s = time.perf_counter() - tick
    if latest_checkpoint(run_dir) is None:
        return CellResult(label, True, 0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan,
                          train_s, 0.0)
    tick = time.perf_counter()
    m = load_model(run_dir, weights=weights)
    x = sample(m, m.diffusion, (n_samples, 1, 8, 8), per_item(seed, "sample", range(n_samples)))
    finite = bool(torch.isfinite(x).all())
    q = evaluate_digits(x.nan_to_num(0.0), seed=seed)
    test = dataset_for(cfg, "test")
    totals = bound_totals(m, m.diffusion, test, range(len(test)), seed=seed + 1, t_per_batch=25)
    per_image = totals.total_bpd
    return CellResult(label, diverged or not finite, m.step, *mean_and_stderr(per_image), q.fd, q.fd_real_vs_real,
                      q.class_score, q.class_score_real, q.confidence, train_s, time.perf_counter() - tick,
                      per_image.tolist())


def paired_differences(rows: list[CellResult]) -> list[str]:
    """Each cell's test bits/dim minus L_simple's, with the paired standard error over the same test images
    (the images' own difficulty cancels, so it is smaller than either cell's)."""
    simple = [r for r in rows if r.cell == CELLS[-1][0] and r.test_nll_per_image]
    if not simple:
        return []
    base = torch.tensor(simple[0].test_nll_per_image, dtype=torch.float64)
    lines = []
    for r in rows:
        if r is simple[0] or len(r.test_nll_per_image) != base.numel():
            continue
        mean, stderr = mean_and_stderr(torch.tensor(r.test_nll_per_image, dtype=torch.float64) - base)
        lines.append(f"- {r.cell} minus L_simple: {mean:+.3f} ± {stderr:.3f} bits/dim "
                     f"(paired over {base.numel()} test images)")
    return lines


def markdown(rows: list[CellResult], steps: int, n_samples: int, setup: str = "") -> str:
    """The results as a markdown table with the date, machine and ``setup`` (what differs from the preset)."""
    lines = [
        f"Table 2 in miniature: digits, {steps} training steps per cell, {n_samples} ancestral samples (T = 1000)"
        f"{', ' + setup if setup else ''}; {machine_line()}",
        "",
        "| objective | test NLL (bits/dim) | Fréchet distance (real vs real) | classifier score (real) | "
        "confidence | diverged |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.cell} | {r.test_nll_bits_per_dim:.3f} ± {r.test_nll_stderr:.3f} | "
                     f"{r.fd:.2f} ({r.fd_real_vs_real:.2f}) | "
                     f"{r.class_score:.2f} ({r.class_score_real:.2f}) | {r.confidence:.3f} | "
                     f"{'**yes** (stopped at step ' + str(r.steps_done) + ')' if r.diverged else 'no'} |")
    differences = paired_differences(rows)
    return "\n".join(lines + ([""] + differences if differences else []))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the six runs and the table")
    p.add_argument("--steps", type=int, default=1500, help="training steps per cell (default 1500)")
    p.add_argument("--samples", type=int, default=256, help="samples per cell (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cells", help="comma-separated cell numbers 1..6 (default: all)")
    p.add_argument("--ema-decay", type=float, help="EMA decay (default: the preset's 0.999, which needs several "
                                                    "thousand steps: after N steps the initial weights keep 0.999^N)")
    p.add_argument("--weights", choices=("ema", "model"), default="ema", help="weights evaluated (default ema)")
    p.add_argument("--t-sampler", choices=T_SAMPLERS, default="uniform",
                   help="how the cells trained on L draw t (default uniform, Algorithm 1)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [CELLS[int(i) - 1] for i in args.cells.split(",")] if args.cells else CELLS
    rows = []
    for label, *kinds in chosen:
        rows.append(run_cell(out, label, *kinds, args.steps, args.samples, args.seed, args.ema_decay, args.weights,
                             args.t_sampler))
        shown = {k: v for k, v in asdict(rows[-1]).items() if k != "test_nll_per_image"}
        print(f"{label}: {shown}", flush=True)
    setup = ", ".join(x for x in (f"EMA decay {args.ema_decay}" if args.ema_decay is not None else "",
                                  f"t for L drawn {args.t_sampler}" if args.t_sampler != "uniform" else "") if x)
    table = markdown(rows, args.steps, args.samples, setup)
    (out / "table2.md").write_text(table + "\n")
    (out / "table2.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    print(table)


if __name__ == "__main__":
    main()
