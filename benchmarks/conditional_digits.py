"""Class-conditional digits with classifier-free guidance: does guidance make the requested digit, at what cost?

    python benchmarks/conditional_digits.py --out runs/conditional [--steps N] [--per-class 50]
    python benchmarks/conditional_digits.py --out runs/conditional-quick --quick     # a smoke test (~1-2 min)

Trains the `digits` preset class-conditionally (model.num_classes = 10, train.label_dropout = 0.1) and, with the
same recipe and budget, unconditionally (or takes --unconditional RUN). Then draws --per-class samples of each
digit for every guidance weight w of --guidance (ε̃ = (1 + w) ε(x, c) − w ε(x, ∅)), the same seeds at every w
(sample j of digit c is stream (seed, "sample", c·per_class + j), as `ddpm sample --class all`), and reports per w:
the digits classifier's accuracy on the samples of each requested digit (its prediction equals the digit asked
for; mean and worst digit), the digits Fréchet distance of all the samples against the test split, and its ratio
to the unconditional model's (same sampler, steps, sample count and seeds). Also reported: the conditional model
sampled without a class (its "no class" input). The target (issue 15): accuracy >= 0.97 at some w whose FD stays
within 1.3x the unconditional model's. Writes OUT/conditional_digits.md (with date and machine), .json, and
OUT/grid.png: one row per digit, a block of samples per w (left to right, as --guidance lists them).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm.checkpoint import latest_checkpoint
from ddpm.config import override, preset
from ddpm.data import digits_arrays
from ddpm.evaluation.digits_metric import (
    REAL_DRAWS,
    digits_features,
    evaluate_digits,
    load_digits_classifier,
    to_digits_tensor,
)
from ddpm.evaluation.frechet import feature_statistics, frechet_distance
from ddpm.images import save_image_grid, to_display_uint8
from ddpm.loading import LoadedModel, load_model
from ddpm.processes import machine_line
from ddpm.rng import numpy_rng, per_item
from ddpm.sampling import sample
from ddpm.train import train

DIGITS = 10
TARGET_ACCURACY = 0.97
TARGET_FD_RATIO = 1.3
GRID_COLUMNS = 8  # samples of each digit shown per w


@dataclass
class Row:
    """One line of the table: a model and guidance weight, its accuracy and Fréchet distance."""

    what: str
    guidance: float | None            # w (None: unconditional sampling)
    accuracy: float | None            # mean over digits of the classifier's accuracy on the requested digit
    worst_digit_accuracy: float | None
    per_digit_accuracy: list[float] | None
    fd: float
    fd_ratio: float                   # fd / the unconditional model's fd
    fd_real_vs_real: float
    fd_real_mean: float               # mean ± sd of the FDs of REAL_DRAWS random real sets of the same size
    fd_real_sd: float
    confidence: float
    seconds: float


def train_run(run_dir: Path, steps: int, seed: int, conditional: bool) -> LoadedModel:
    """Train (or resume, or reuse) one digits run with the preset's recipe and ``steps`` steps."""
    changes: dict = dict(total_steps=steps, checkpoint_every=max(1, steps // 5), seed=seed)
    if conditional:
        changes.update(num_classes=DIGITS, label_dropout=0.1)
    cfg = override(preset("digits"), **changes)
    train(cfg, run_dir, resume=latest_checkpoint(run_dir) is not None, progress=False)
    return load_model(run_dir)


def draw(model: LoadedModel, n: int, seed: int, sampler: str, steps: int, labels: list[int] | None,
         guidance: float, batch: int) -> torch.Tensor:
    """n samples (sample i seeded by (seed, "sample", i), of class labels[i]) in [-1, 1], drawn in batches."""
    out = []
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        noise = per_item(seed, "sample", range(lo, hi))
        out.append(sample(model, model.diffusion, (hi - lo, *model.sample_shape), noise, sampler, steps,
                          spacing="uniform", classes=None if labels is None else labels[lo:hi], guidance=guidance))
    return torch.cat(out)


def measure(what: str, x: torch.Tensor, labels: list[int] | None, guidance: float | None, fd_uncond: float | None,
            seed: int, seconds: float) -> Row:
    """Accuracy on the requested digits (if any) and the digits Fréchet distance of samples ``x``."""
    q = evaluate_digits(x, seed=seed)
    per_digit = None
    if labels is not None:
        with torch.no_grad():
            predicted = load_digits_classifier().eval()(to_digits_tensor(x)).argmax(dim=1).numpy()
        wanted = np.asarray(labels)
        per_digit = [float((predicted[wanted == c] == c).mean()) for c in range(DIGITS)]
    return Row(what, guidance, None if per_digit is None else float(np.mean(per_digit)),
               None if per_digit is None else float(min(per_digit)), per_digit, q.fd,
               q.fd / fd_uncond if fd_uncond else 1.0, q.fd_real_vs_real, q.fd_real_mean, q.fd_real_sd,
               q.confidence, seconds)


def balanced_real_fds(per_class: int, seed: int) -> list[float]:
    """FDs against the test split (the metric's reference) of REAL_DRAWS class-balanced sets of real training
    digits, ``per_class`` of each — the class make-up of the guided samples, where a random real set's varies.
    Draw k takes class c's images from stream (seed, "digits-reference", k, c)."""
    train_x, train_y = digits_arrays("train")
    f_train, f_test = digits_features(train_x), digits_features(digits_arrays("test")[0])
    ref = feature_statistics(f_test)
    fds = []
    for k in range(REAL_DRAWS):
        idx = np.concatenate([numpy_rng(seed, "digits-reference", k, c).choice(np.flatnonzero(train_y == c),
                                                                              per_class, replace=False)
                              for c in range(DIGITS)])
        fds.append(frechet_distance(*feature_statistics(f_train[idx]), *ref))
    return fds


def markdown(rows: list[Row], args: argparse.Namespace, n: int, balanced: list[float]) -> str:
    """The table, the target's verdict, and the setting, as markdown."""
    lines = [f"Class-conditional digits with classifier-free guidance: {args.steps} training steps per model, "
             f"{args.per_class} samples of each digit ({n} per row), {args.sampler} with "
             f"{args.sample_steps} steps; {machine_line()}", "",
             "| model, sampling | w | accuracy on the requested digit (mean; worst digit) | digits FD (real vs real) "
             "| FD / unconditional | confidence |", "|---|---|---|---|---|---|"]
    for r in rows:
        acc = "—" if r.accuracy is None else f"{r.accuracy:.3f} ({r.worst_digit_accuracy:.3f})"
        w = "—" if r.guidance is None else f"{r.guidance:g}"
        lines.append(f"| {r.what} | {w} | {acc} | {r.fd:.2f} ({r.fd_real_vs_real:.2f}) | {r.fd_ratio:.2f} | "
                     f"{r.confidence:.3f} |")
    base = rows[0]
    lines += ["", f"Real digits against the same test split, {REAL_DRAWS} sets of {n} each: random training digits "
              f"{base.fd_real_mean:.2f} ± {base.fd_real_sd:.2f}; class-balanced ones ({args.per_class} of each "
              f"digit, as the guided samples) {np.mean(balanced):.2f} ± {np.std(balanced, ddof=1):.2f}. A sample "
              "set's FD is to be read against the real sets of its own make-up: the unconditional model's and the "
              "no-class samples' against the random ones, the guided samples' against the class-balanced ones."]
    met = [r for r in rows if r.accuracy is not None and r.accuracy >= TARGET_ACCURACY
           and r.fd_ratio <= TARGET_FD_RATIO]
    lines += ["", f"Target (accuracy >= {TARGET_ACCURACY} at a w whose FD is within {TARGET_FD_RATIO}x the "
              f"unconditional model's): " + (f"**met** at w = {', '.join(f'{r.guidance:g}' for r in met)}" if met
                                                 else "**not met**"), "",
              "Per-digit accuracy:", "", "| w | " + " | ".join(str(c) for c in range(DIGITS)) + " |",
              "|---|" + "---|" * DIGITS]
    for r in rows:
        if r.per_digit_accuracy is not None:
            lines.append(f"| {r.guidance:g} | " + " | ".join(f"{a:.2f}" for a in r.per_digit_accuracy) + " |")
    return "\n".join(lines) + "\n"


def grid(path: Path, per_w: list[torch.Tensor], per_class: int) -> None:
    """One row per digit: GRID_COLUMNS samples at each w, a white tile between the blocks."""
    cols = min(GRID_COLUMNS, per_class)
    blocks = [to_display_uint8(x.reshape(DIGITS, per_class, *x.shape[1:])[:, :cols]) for x in per_w]
    white = np.full((DIGITS, 1, *blocks[0].shape[2:]), 255, dtype=np.uint8)
    parts = [p for b in blocks for p in (b, white)][:-1]
    save_image_grid(path, np.concatenate(parts, axis=1))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the runs, the table and the grid")
    p.add_argument("--steps", type=int, default=preset("digits").train.total_steps,
                   help="training steps per model (default: the digits preset's)")
    p.add_argument("--per-class", type=int, default=50, help="samples of each digit per w (default 50)")
    p.add_argument("--guidance", default="0,0.5,1,2,4", help="guidance weights w (comma-separated)")
    p.add_argument("--sampler", default="ancestral", help="a sampler of ddpm.sampling.SAMPLERS (default ancestral)")
    p.add_argument("--sample-steps", type=int, default=250, help="reverse steps, respaced uniformly (default 250)")
    p.add_argument("--unconditional", help="an unconditional digits run or checkpoint to compare with (default: "
                                           "train one with the same recipe into OUT/unconditional)")
    p.add_argument("--batch-size", type=int, default=100, help="samples per sampler call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a smoke test: 40 training steps, 3 samples of each "
                                                        "digit, 5 reverse steps")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.per_class, args.sample_steps = 40, 3, 5
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ws = [float(w) for w in args.guidance.split(",")]
    n = DIGITS * args.per_class
    labels = [c for c in range(DIGITS) for _ in range(args.per_class)]  # class-major, as `ddpm sample --class all`

    tick = time.perf_counter()
    cond = train_run(out / "conditional", args.steps, args.seed, conditional=True)
    uncond = load_model(args.unconditional) if args.unconditional else \
        train_run(out / "unconditional", args.steps, args.seed, conditional=False)
    print(f"trained in {time.perf_counter() - tick:.0f} s", flush=True)

    def timed(model: LoadedModel, y: list[int] | None, w: float) -> tuple[torch.Tensor, float]:
        t0 = time.perf_counter()
        x = draw(model, n, args.seed, args.sampler, args.sample_steps, y, w, args.batch_size)
        return x, time.perf_counter() - t0

    x_u, s_u = timed(uncond, None, 0.0)
    base = measure("unconditional model", x_u, None, None, None, args.seed, s_u)
    rows = [base]
    x_null, s_null = timed(cond, None, 0.0)
    rows.append(measure("conditional model, no class", x_null, None, None, base.fd, args.seed, s_null))
    per_w = []
    for w in ws:
        x, s = timed(cond, labels, w)
        per_w.append(x)
        rows.append(measure("conditional model, guided", x, labels, w, base.fd, args.seed, s))
        print(json.dumps(asdict(rows[-1])), flush=True)
    grid(out / "grid.png", per_w, args.per_class)
    balanced = balanced_real_fds(args.per_class, args.seed)
    table = markdown(rows, args, n, balanced)
    (out / "conditional_digits.md").write_text(table)
    (out / "conditional_digits.json").write_text(json.dumps({"args": vars(args), "rows": [asdict(r) for r in rows],
                                                            "fd_real_balanced": balanced}, indent=2))
    print(table)
    print(f"total {time.perf_counter() - tick:.0f} s -> {out / 'conditional_digits.md'}, {out / 'grid.png'}")


if __name__ == "__main__":
    main()
