"""The bound of a K-step chain against K, with the model's variance and with Analytic-DPM's (issue 18).

    python benchmarks/bound_steps.py --checkpoint RUN --out runs/bound_steps   # RUN: e.g. quickstart/run

For each K (default 10, 20, 50, 100) and each reverse variance (the model's σ² and Analytic-DPM's σ*² from the
Γ estimate stored beside the checkpoint by ``ddpm analytic-variance``), ``ddpm nll --steps K --variance V`` on
the test split; plus the full T-step bound. Writes OUT/bound_steps.md (with date and machine), .json and .png
(bits/dim against K, the T-step bound as a level). No wall times: the numbers do not depend on the CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddpm.evaluation.common import CommonOptions
from ddpm.evaluation.nll import NLLOptions, run_nll
from ddpm.processes import machine_line


def bound(checkpoint: str, out: Path, steps: int | None, variance: str) -> tuple[float, float]:
    """(mean, standard error) of the bound in bits/dim on the test split, as ``ddpm nll`` writes it."""
    common = CommonOptions(checkpoint=checkpoint, out=str(out), device="cpu", progress=False, overwrite=True)
    r = run_nll(common, NLLOptions(steps=steps, variance=variance))
    assert r is not None  # one process
    return r.nll_bits_per_dim, r.nll_stderr_bits_per_dim


def plot(rows: list[dict], full: tuple[float, float], T: int, path: Path) -> Path:
    """bits/dim against K, one line per variance, the T-step bound as a level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variance, label in (("model", "the model's σ² (β)"), ("analytic", "Analytic-DPM's σ*²")):
        mine = [r for r in rows if r["variance"] == variance]
        ax.errorbar([r["steps"] for r in mine], [r["bits_per_dim"] for r in mine],
                    yerr=[r["stderr"] for r in mine], marker="o", capsize=3, label=label)
    ax.axhline(full[0], color="black", linestyle="--", label=f"all T = {T} steps ({full[0]:.3f})")
    ax.set_xscale("log")
    ax.set_xlabel("steps K of the chain (network evaluations per image)")
    ax.set_ylabel("test bound (bits/dim, lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a trained checkpoint or run directory")
    ap.add_argument("--out", default="runs/bound_steps")
    ap.add_argument("--steps", default="10,20,50,100", help="chain lengths K (comma-separated)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    full = bound(args.checkpoint, out / "nll_full", None, "model")
    rows = []
    for k in (int(s) for s in args.steps.split(",")):
        for variance in ("model", "analytic"):
            mean, stderr = bound(args.checkpoint, out / f"nll_{k}_{variance}", k, variance)
            rows.append({"steps": k, "variance": variance, "bits_per_dim": mean, "stderr": stderr})
            print(json.dumps(rows[-1]), flush=True)
    T = json.loads((out / "nll_full" / "nll.json").read_text())["T"]
    when = machine_line()
    lines = [f"Test bound of a K-step chain ({when}); all T = {T} steps: {full[0]:.4f} ± {full[1]:.4f} bits/dim.", "",
             "| K | σ² of the model (bits/dim) | Analytic-DPM σ*² (bits/dim) |", "|---:|---:|---:|"]
    for k in sorted({r["steps"] for r in rows}):
        m, a = (next(r for r in rows if r["steps"] == k and r["variance"] == v) for v in ("model", "analytic"))
        lines.append(f"| {k} | {m['bits_per_dim']:.4f} ± {m['stderr']:.4f} | {a['bits_per_dim']:.4f} ± "
                     f"{a['stderr']:.4f} |")
    (out / "bound_steps.md").write_text("\n".join(lines) + "\n")
    (out / "bound_steps.json").write_text(json.dumps({"full": full, "T": T, "rows": rows}, indent=2))
    plot(rows, full, T, out / "bound_steps.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
