"""Likelihood-first training on the digits: the test bits/dim of presets (or variants) trained for the bound.

    python benchmarks/likelihood_digits.py --out runs/likelihood [--runs digits,digits:loss_type=vlb:...]

Each run trains a preset (with optional overrides, ``NAME:key=value:key=value``), then measures the full
variational bound (Eq. 5, all T terms) on the 180 test digits and on 180 of its training images — the gap says
how much it overfits — with the standard error over images, and the digits Fréchet distance of ``--samples``
ancestral samples (Algorithm 2, all T steps, EMA weights) beside the real-vs-real baseline. Prints a markdown
table with the machine; the compressed file of a model comes from
``benchmarks/compression_digits.py --checkpoint OUT/NAME``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from ddpm.checkpoint import latest_checkpoint
from ddpm.config import RunConfig, override, preset
from ddpm.data import dataset_for
from ddpm.evaluation.common import mean_and_stderr
from ddpm.evaluation.digits_metric import evaluate_digits
from ddpm.evaluation.nll import bound_totals
from ddpm.loading import LoadedModel, load_model
from ddpm.processes import machine_line
from ddpm.rng import per_item
from ddpm.sampling import sample
from ddpm.train import train

# the quickstart's model, and the recipes of Nichol & Dhariwal (2021) for bits/dim: learned-range Σ with the hybrid
# loss or with L_vlb and importance-sampled t, the cosine schedule, dropout against the 1,617 training digits
NLL_RECIPE = "var_type=learned_range:schedule=cosine:dropout=0.1:total_steps=4000"
DEFAULT_RUNS = ("digits", f"digits:{NLL_RECIPE}:loss_type=hybrid",
                f"digits:{NLL_RECIPE}:loss_type=vlb:t_sampler=loss-second-moment")


def parse_run(spec: str) -> tuple[str, RunConfig]:
    """``digits:total_steps=4000:dropout=0.2`` → (the spec as a folder name, the config)."""
    name, *changes = spec.split(":")
    values: dict[str, Any] = {}
    for change in changes:
        key, _, text = change.partition("=")
        values[key] = json.loads(text) if text[:1] in "0123456789-[{" or text in ("true", "false", "null") else text
    return spec.replace(":", "_").replace("=", "-"), override(preset(name), **values)


def bound(m: LoadedModel, split: str, n: int) -> tuple[float, float]:
    """Mean and standard error of the full bound (bits/dim) over the first ``n`` images of ``split``."""
    data = dataset_for(m.config, split)
    totals = bound_totals(m, m.diffusion, data, range(min(n, len(data))), seed=1, t_per_batch=25)
    return mean_and_stderr(totals.total_bpd)


def sample_quality(m: LoadedModel, n: int) -> tuple[float, float]:
    """Digits Fréchet distance of ``n`` ancestral samples (all T steps) and of real against real."""
    x = sample(m, m.diffusion, (n, *m.sample_shape), per_item(0, "sample", range(n)))
    q = evaluate_digits(x, seed=0)
    return q.fd, q.fd_real_vs_real


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--runs", default=",".join(DEFAULT_RUNS), help="comma-separated presets with :key=value overrides")
    p.add_argument("--images", type=int, default=180, help="images of each split for the bound (default 180)")
    p.add_argument("--samples", type=int, default=256, help="ancestral samples for the Fréchet distance (0: none)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.runs.split(","):
        name, cfg = parse_run(spec)
        run_dir = out / name
        tick = time.perf_counter()
        last = latest_checkpoint(run_dir)
        if last is None or last.name != f"step_{cfg.train.total_steps:09d}":
            train(cfg, run_dir, resume=last is not None, progress=False)
        train_s = time.perf_counter() - tick
        m = load_model(run_dir)
        test, train_images = bound(m, "test", args.images), bound(m, "train", args.images)
        fd, fd_real = sample_quality(m, args.samples) if args.samples else (math.nan, math.nan)
        rows.append({"run": spec, "steps": cfg.train.total_steps, "train_s": train_s, "test_bpd": test[0],
                     "test_se": test[1], "train_bpd": train_images[0], "train_se": train_images[1],
                     "fd": fd, "fd_real_vs_real": fd_real})
        print(json.dumps(rows[-1]), flush=True)
    lines = [f"Full bound on the digits (17 levels), {args.images} images per split; {machine_line()}", "",
             "| run | steps | training (s) | test bits/dim | training images' bits/dim | gap | "
             f"Fréchet distance, {args.samples} samples (real vs real) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| `{r['run']}` | {r['steps']} | {r['train_s']:.0f} | {r['test_bpd']:.3f} ± {r['test_se']:.3f} "
                     f"| {r['train_bpd']:.3f} ± {r['train_se']:.3f} | {r['test_bpd'] - r['train_bpd']:+.3f} "
                     f"| {r['fd']:.2f} ({r['fd_real_vs_real']:.2f}) |")
    (out / "likelihood.md").write_text("\n".join(lines) + "\n")
    (out / "likelihood.json").write_text(json.dumps(rows, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
