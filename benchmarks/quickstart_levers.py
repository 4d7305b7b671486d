"""The quickstart's levers measured: sample quality against training time for variants of the `digits` preset.

    python benchmarks/quickstart_levers.py --out runs/levers [--variants constant-ema,warm-ema,...] [--steps 1500]

Each variant trains the quickstart's model (the `digits` preset, seed 0) with a few options changed, checkpointing
every ``--eval-every`` steps; each checkpoint's EMA weights then draw the same ``--n`` samples with a cheap
sampler (default SDE-DPM-Solver++(2M), 50 log-SNR steps: within 6% of Algorithm 2's Fréchet distance on the
quickstart's model, at 1/20 of its cost) and get the digits Fréchet distance, so that quality can be read against
the training time each variant needed (its own log's wall clock). Prints a markdown table with the machine.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from ddpm.checkpoint import list_checkpoints
from ddpm.config import override, preset
from ddpm.evaluation.digits_metric import evaluate_digits
from ddpm.loading import load_model
from ddpm.processes import machine_line
from ddpm.rng import per_item
from ddpm.sampling import SAMPLER_NAMES, sample
from ddpm.train import train

# name -> overrides of the digits preset (what the quickstart trains)
VARIANTS: dict[str, dict[str, Any]] = {
    "constant-ema": {"ema_warmup_power": None},            # ddpm 0.2: decay 0.999 from the initial weights
    "warm-ema": {},                                         # the preset: decay 1 − n^(−3/4) up to 0.999
    "warm-ema-2/3": {"ema_warmup_power": 2 / 3},
    "warm-ema-bf16": {"bf16": True},
    "warm-ema-compile": {"compile": True},
    "warm-ema-1-block": {"num_res_blocks": 1},
    "warm-ema-24-channels": {"base_channels": 24},
    "warm-ema-batch-64": {"batch_size": 64},
}


def wall_at(run_dir: Path) -> dict[int, float]:
    """Training seconds at each logged step (the trainer's log.csv)."""
    with open(run_dir / "log.csv", newline="") as f:
        return {int(float(r["step"])): float(r["wall_s"]) for r in csv.DictReader(f)}


def measure(out: Path, name: str, steps: int, every: int, n: int, sampler: str, k: int) -> list[dict[str, Any]]:
    """Train variant ``name`` (or reuse its finished run) and evaluate every checkpoint."""
    cfg = override(preset("digits"), **VARIANTS[name], total_steps=steps, checkpoint_every=every,
                   keep_checkpoints=steps // every + 1, log_every=every)
    run_dir = out / name.replace("/", "_")
    if not list_checkpoints(run_dir) or list_checkpoints(run_dir)[-1].name != f"step_{steps:09d}":
        train(cfg, run_dir, resume=bool(list_checkpoints(run_dir)), progress=False)
    return evaluate_run(run_dir, name, n, sampler, k)


def evaluate_run(run_dir: Path, name: str, n: int, sampler: str, k: int) -> list[dict[str, Any]]:
    """Each checkpoint of a run: its EMA weights' samples scored, beside the training seconds it had taken."""
    wall = wall_at(run_dir)
    rows = []
    for ckpt in list_checkpoints(run_dir):
        m = load_model(ckpt, weights="ema")
        x = sample(m, m.diffusion, (n, *m.sample_shape), per_item(0, "sample", range(n)), sampler=sampler,
                   steps=k, spacing="logsnr")
        q = evaluate_digits(x, seed=0)
        rows.append({"variant": name, "step": m.step, "train_s": wall[m.step], "fd": q.fd,
                     "fd_real_vs_real": q.fd_real_vs_real, "confidence": q.confidence})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], sampler: str, k: int, n: int) -> str:
    """One row per variant: its training speed and the Fréchet distance at each evaluated step."""
    steps = sorted({r["step"] for r in rows})
    real = rows[0]["fd_real_vs_real"]
    lines = [f"EMA samples, {sampler} with {k} log-SNR steps, {n} samples (real vs real {real:.2f}); {machine_line()}",
             "", "| variant | steps/s | " + " | ".join(f"FD at {s}" for s in steps) + " |",
             "|---|---:|" + "---:|" * len(steps)]
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = {r["step"]: r for r in rows if r["variant"] == name}
        last = mine[max(mine)]
        cells = [f"{mine[s]['fd']:.2f} ({mine[s]['train_s']:.0f} s)" if s in mine else "" for s in steps]
        lines.append(f"| {name} | {last['step'] / last['train_s']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the runs and the table")
    p.add_argument("--variants", default="constant-ema,warm-ema", help=f"comma-separated, of {sorted(VARIANTS)}")
    p.add_argument("--steps", type=int, default=1500, help="training steps per variant (default 1500)")
    p.add_argument("--eval-every", type=int, default=250, help="steps between evaluated checkpoints (default 250)")
    p.add_argument("--n", type=int, default=256, help="samples per checkpoint (default 256, the quickstart's)")
    p.add_argument("--sampler", default="sde-dpm++2m", choices=SAMPLER_NAMES)
    p.add_argument("--sampler-steps", type=int, default=50)
    p.add_argument("--existing", nargs="*", default=[], help="finished runs to evaluate too (e.g. an earlier "
                                                             "quickstart's run), named by their folder")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in args.existing:
        rows += evaluate_run(Path(run), f"existing: {run}", args.n, args.sampler, args.sampler_steps)
    for name in filter(None, args.variants.split(",")):
        if name not in VARIANTS:
            p.error(f"unknown variant {name!r}; known: {sorted(VARIANTS)}")
        rows += measure(out, name, args.steps, args.eval_every, args.n, args.sampler, args.sampler_steps)
    table = markdown(rows, args.sampler, args.sampler_steps, args.n)
    (out / "levers.md").write_text(table + "\n")
    (out / "levers.json").write_text(json.dumps(rows, indent=2))
    print(table)


if __name__ == "__main__":
    main()
