"""What class conditioning costs a training step: the `digits` preset with and without model.num_classes = 10.

    python benchmarks/conditional_step.py --out runs/conditional-step [--chunks 6] [--chunk-steps 40]

Both runs train in alternating chunks (ABAB…, each chunk a resume of its run), so a busy machine slows both alike;
each chunk's throughput is the trainer's own log row (images per second over the chunk's steps, setup excluded).
Prints the median and the best chunk of each and their ratio, with the machine.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

from ddpm.config import override, preset
from ddpm.processes import machine_line
from ddpm.train import train

VARIANTS = {"unconditional": {}, "class-conditional": {"num_classes": 10}}


def chunk_rates(run_dir: Path) -> list[float]:
    """Images per second of each logged window of a run (one per chunk)."""
    with open(run_dir / "log.csv", newline="") as f:
        return [float(r["img_per_s"]) for r in csv.DictReader(f)]


def measure(out: Path, chunks: int, chunk_steps: int) -> dict[str, list[float]]:
    """Train both variants chunk by chunk, alternating; their per-chunk images per second."""
    for k in range(1, chunks + 1):
        for name, changes in VARIANTS.items():
            cfg = override(preset("digits"), **changes, total_steps=k * chunk_steps, log_every=chunk_steps,
                           checkpoint_every=chunk_steps, keep_checkpoints=1, sample_every=0)
            train(cfg, out / name, resume=k > 1, progress=False)
    return {name: chunk_rates(out / name) for name in VARIANTS}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="a new folder for the two runs")
    p.add_argument("--chunks", type=int, default=6)
    p.add_argument("--chunk-steps", type=int, default=40)
    args = p.parse_args(argv)
    rates = measure(args.out, args.chunks, args.chunk_steps)
    print(f"{machine_line()}; {args.chunks} chunks of {args.chunk_steps} steps each, alternating\n")
    print("| variant | img/s, median | img/s, best | per chunk |\n|---|---:|---:|---|")
    for name, r in rates.items():
        print(f"| {name} | {statistics.median(r):.0f} | {max(r):.0f} | {', '.join(f'{x:.0f}' for x in r)} |")
    u, c = rates["unconditional"], rates["class-conditional"]
    print(f"\nstep time, class-conditional / unconditional: {statistics.median(u) / statistics.median(c):.3f} "
          f"(medians), {max(u) / max(c):.3f} (best)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
