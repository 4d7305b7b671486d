"""Sample quality and wall time: ancestral sampling (Algorithm 2, all T steps) against every sampler of the
registry with few steps.

On a digits checkpoint (e.g. from ``ddpm train --preset digits --out RUN``)::

    python benchmarks/bench_samplers.py --checkpoint RUN [--num-samples 400] [--steps 10,20,50,100]
        [--samplers ddim,dpm++2m,...] [--spacing uniform]

Every sampler draws the same samples (sample i seeded by (seed, i)); each is scored with the offline digits
metric (Fréchet distance of classifier features to the test split, classifier score) beside sets of real digits
of the same size. One FD of a few hundred images varies by ±2–3 from one draw of samples to the next, so
``--seeds 0,1,2,3`` repeats every sampler with each seed's samples and reports the FDs' mean ± standard deviation.
``--sigma2 beta-tilde`` (or ``beta``) samples a fixed-variance model with the other of the paper's two choices of
σ_t² (Sec. 3.2) in every sampler that takes the model's variance (ancestral and its respacings).
Prints a markdown table; ``--json`` also saves the rows, ``--save-samples DIR`` every seed's samples as
``DIR/SAMPLER-STEPS-SPACING-seedS.npz`` (uint8, as ``ddpm sample`` writes them) for
``benchmarks/independent_digits.py``, which scores them without the project's metric.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm.checkpoint import CheckpointError
from ddpm.config import VarType
from ddpm.diffusion import GaussianDiffusion
from ddpm.evaluation.analytic_variance import analytic_diffusion, read_estimate
from ddpm.evaluation.figures import SamplerRun, plot_sampler_comparison
from ddpm.evaluation.quality import digits_quality
from ddpm.evaluation.samples import SamplerSpec, generate
from ddpm.loading import LoadedModel, load_model
from ddpm.processes import machine_line
from ddpm.sampling import SAMPLER_NAMES, SAMPLERS
from ddpm.schedules import SPACINGS


@dataclass(frozen=True)
class BenchRow:
    """One sampler's wall time and sample quality."""

    sampler: str
    steps: int
    eta: float
    spacing: str
    n: int
    seeds: tuple[int, ...]
    wall_s: float             # per seed, mean
    img_per_s: float
    fd: float                 # mean over the seeds
    fd_sd: float | None       # standard deviation over the seeds (None for one seed)
    fds: tuple[float, ...]    # one per seed
    fd_real_mean: float       # sets of real digits of the same size (the first seed's draws)
    fd_real_sd: float
    class_score: float
    class_score_real: float
    confidence: float
    confidence_real: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="digits checkpoint directory or run directory")
    p.add_argument("--num-samples", "--n", dest="n", type=int, default=400, help="samples per sampler (default 400)")
    p.add_argument("--steps", default="10,20,50,100", help="step counts of the few-step samplers (default "
                                                           "10,20,50,100)")
    p.add_argument("--samplers", default=",".join(s for s in SAMPLER_NAMES if s != "ancestral"),
                   help=f"registered samplers to run at each step count (default: all but ancestral: "
                        f"{', '.join(SAMPLER_NAMES)})")
    p.add_argument("--spacing", choices=SPACINGS, default="uniform", help="which of the T steps (default uniform)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM η (default 0)")
    p.add_argument("--no-ancestral", action="store_true", help="skip the (slow) ancestral row")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; each draws its own samples (default 0)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--weights", choices=("ema", "model"), default="ema")
    p.add_argument("--sigma2", choices=tuple(SIGMA2), default="model",
                   help="σ_t² of the samplers that take the model's: its own (default), β or β̃ (Sec. 3.2)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--png", help="also plot Fréchet distance against network evaluations to this PNG")
    p.add_argument("--save-samples", type=Path, help="also save every seed's samples as .npz files in this folder")
    return p.parse_args(argv)


# --sigma2: the fixed reverse variances of Sec. 3.2 (ddpm.config.VarType names)
SIGMA2: dict[str, VarType | None] = {"model": None, "beta": "fixed_beta", "beta-tilde": "fixed_beta_tilde"}


def with_sigma2(diffusion: GaussianDiffusion, choice: str) -> GaussianDiffusion:
    """``diffusion`` with σ_t² = β_t or β̃_t instead of its own (``choice`` of SIGMA2); a learned Σ is refused."""
    var_type = SIGMA2[choice]
    if var_type is None:
        return diffusion
    if diffusion.learn_sigma:
        raise SystemExit(f"--sigma2 {choice} replaces a fixed variance; this model learns Σ ({diffusion.var_type})")
    d = diffusion
    return GaussianDiffusion(d.schedule, d.mean_type, var_type, d.loss_type, d.levels, d.hybrid_lambda)


def specs(T: int, samplers: list[str], steps: list[int], eta: float, ancestral: bool,
          spacing: str = "uniform") -> list[SamplerSpec]:
    """Ancestral on all T steps, then each sampler at each step count that fits in T."""
    out = [SamplerSpec(sampler="ancestral")] if ancestral else []
    skipped = [k for k in steps if not 1 <= k <= T]
    if skipped:
        print(f"skipping steps {skipped}: the model has T = {T}", file=sys.stderr)
    return out + [SamplerSpec(sampler=name, steps=k, eta=eta if SAMPLERS[name].takes_eta else 0.0,
                              spacing=spacing)  # type: ignore[arg-type]
                  for name in samplers for k in steps if 1 <= k <= T]


def samples_file(folder: Path, spec: SamplerSpec, T: int, seed: int) -> Path:
    """Where ``--save-samples`` puts one seed's samples of one sampler."""
    name = f"ddim-eta{spec.eta:g}" if spec.sampler == "ddim" else spec.sampler
    return folder / f"{name}-{spec.n_steps(T)}-{spec.spacing or 'default'}-seed{seed}.npz"


def bench(model: LoadedModel, spec: SamplerSpec, n: int, seeds: list[int], batch_size: int, device: str,
          analytic: GaussianDiffusion | None = None, base: GaussianDiffusion | None = None,
          save: Path | None = None) -> BenchRow:
    """Draw n samples with one sampler per seed, time it, and score the samples (``analytic``: the diffusion
    with Γ; ``base``: the others', default the model's; ``save``: a folder for the samples); class score and
    confidence are the first seed's."""
    shape = model.sample_shape
    diffusion = analytic if SAMPLERS[spec.sampler].needs_gamma else base or model.diffusion
    walls, qs = [], []
    for seed in seeds:
        tick = time.perf_counter()
        images = generate(model, diffusion, shape, spec, seed, range(n), batch_size, device, progress=True)
        walls.append(time.perf_counter() - tick)
        qs.append(digits_quality(images, seed))
        if save is not None:
            np.savez(samples_file(save, spec, model.diffusion.T, seed), images=images)
    q, fds = qs[0], tuple(r.fd for r in qs)
    wall_s = statistics.mean(walls)
    return BenchRow(spec.sampler, spec.n_steps(model.diffusion.T), spec.eta, spec.spacing, n, tuple(seeds), wall_s,
                    n / wall_s, statistics.mean(fds), statistics.stdev(fds) if len(fds) > 1 else None, fds,
                    q.fd_real_mean, q.fd_real_sd, q.class_score, q.class_score_real, q.confidence, q.confidence_real)


def markdown(rows: list[BenchRow]) -> str:
    """The rows as a markdown table."""
    seeds = len(rows[0].seeds)
    fd_head = f"digits FD, mean ± sd of {seeds} seeds" if seeds > 1 else "digits FD"
    lines = [f"| sampler | steps | spacing | wall time (s) | img/s | {fd_head} (real sets) | class score (real) "
             "| confidence (real) |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        name = f"ddim η={r.eta:g}" if r.sampler == "ddim" else r.sampler
        fd = f"{r.fd:.2f}" + (f" ± {r.fd_sd:.2f}" if r.fd_sd is not None else "")
        lines.append(f"| {name} | {r.steps} | {r.spacing} | {r.wall_s:.1f} | {r.img_per_s:.1f} "
                     f"| {fd} ({r.fd_real_mean:.2f} ± {r.fd_real_sd:.2f}) "
                     f"| {r.class_score:.2f} ({r.class_score_real:.2f}) "
                     f"| {r.confidence:.3f} ({r.confidence_real:.3f}) |")
    return "\n".join(lines)


def plot(rows: list[BenchRow], path: str | Path) -> Path:
    """Fréchet distance against network evaluations, a line per sampler; ancestral (all T steps) as a level."""
    runs = [SamplerRun(r.sampler, r.steps, r.fd, r.spacing) for r in rows]
    reference = next((r for r in runs if r.sampler == "ancestral"), None)
    return plot_sampler_comparison(path, [r for r in runs if r.sampler != "ancestral"], reference,
                                   rows[0].fd_real_mean, rows[0].fd_real_sd)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint, args.weights, args.device)
    m = model.config.model
    if m.kind != "unet" or (m.in_channels, m.image_size) != (1, 8):  # type: ignore[union-attr]
        raise SystemExit(f"{args.checkpoint} is not a digits model (1 channel, 8×8): the digits metric does not apply")
    steps = [int(k) for k in args.steps.split(",") if k.strip()]
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    unknown = [s for s in samplers if s not in SAMPLERS]
    if unknown:
        raise SystemExit(f"unknown samplers {unknown}; registered: {', '.join(SAMPLER_NAMES)}")
    analytic = None
    if any(SAMPLERS[s].needs_gamma for s in samplers):
        try:  # Analytic-DPM's Γ, stored beside the checkpoint by `ddpm analytic-variance`
            analytic = analytic_diffusion(model, read_estimate(args.checkpoint, model)[0])
        except CheckpointError as e:
            print(f"skipping the Analytic-DPM samplers: {e}", file=sys.stderr)
            samplers = [s for s in samplers if not SAMPLERS[s].needs_gamma]
    seeds = [int(k) for k in args.seeds.split(",") if k.strip()]
    base = with_sigma2(model.diffusion, args.sigma2)
    if args.save_samples:
        args.save_samples.mkdir(parents=True, exist_ok=True)
    rows = [bench(model, spec, args.n, seeds, args.batch_size, args.device, analytic, base, args.save_samples)
            for spec in specs(model.diffusion.T, samplers, steps, args.eta, not args.no_ancestral, args.spacing)]
    print(f"{args.checkpoint} (step {model.step}, {model.weights} weights, T = {model.diffusion.T}, σ² "
          f"{base.var_type}), {args.n} samples each, seeds {seeds}, device {args.device}; {machine_line()}\n")
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    if args.png:
        plot(rows, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
