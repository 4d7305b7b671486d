"""Compression with a trained digits model (Algorithms 3-4): real files against the model's own bound.

    python benchmarks/compression_digits.py --checkpoint runs/digits --out runs/compression [--analytic 100]

For each chain (all T = 1000 steps, and respaced to 100 by default) and latent grid: compress the digits
test split into one file, decompress it, check every pixel, and report the file's bits/dim beside the
variational bound `ddpm nll` gives for the same model, images and chain (mean ± standard error), the
start-up cost, and the speed each way. Baselines: raw 8-bit pixels, the 17 levels packed at log2(17) bits,
the images as PNG files (as `ddpm decompress` writes them, and optimized), all images in one PNG strip,
and xz (LZMA, preset 9e) of the level array. Writes OUT/compression.md (with date and machine) and .json.
Run it single-threaded (OMP_NUM_THREADS=1) for numbers comparable with the table in docs/compression.md.
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm.compression import CodecOptions, compress, decompress
from ddpm.compression.files import write_images
from ddpm.data.digits import digits_dataset
from ddpm.data.levels import from_levels, requantize, to_levels
from ddpm.evaluation.analytic_variance import read_estimate
from ddpm.evaluation.common import mean_and_stderr
from ddpm.evaluation.nll import bound_totals
from ddpm.loading import load_model
from ddpm.processes import machine_line
from ddpm.sampling.analytic import AnalyticDiffusion


def bound(model, images: np.ndarray, steps: int, gamma: torch.Tensor | None = None) -> tuple[float, float]:
    """Mean ± standard error of the full bound (bits/dim) on the chain of ``steps`` steps, as ``ddpm nll``
    (``--variance analytic`` with ``gamma``)."""
    levels = model.diffusion.levels
    x0 = [from_levels(k, levels) for k in images]
    base = model.diffusion if gamma is None else AnalyticDiffusion(model.diffusion, gamma)
    totals = bound_totals(model, base.with_steps(steps), x0, range(len(x0)), seed=0, batch_size=16,
                          t_per_batch=10, clip_denoised=True, decoder="discretized")
    return mean_and_stderr(totals.total_bpd)


def baselines(images: np.ndarray, levels: int) -> dict[str, float]:
    """Bits per pixel value of general-purpose lossless codes of the same images."""
    dims = images.size
    eight_bit = requantize(images, levels, 256)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp), images, levels)
        png_files = sum(p.stat().st_size for p in paths)
        png_opt = 0
        for p in paths:
            buf = io.BytesIO()
            Image.open(p).save(buf, format="PNG", optimize=True)
            png_opt += len(buf.getvalue())
    xz = lzma.compress(images.tobytes(), preset=9 | lzma.PRESET_EXTREME)
    strip = io.BytesIO()
    Image.fromarray(np.concatenate(list(eight_bit[:, 0]), axis=1)).save(strip, format="PNG", optimize=True)
    return {
        "raw 8-bit pixels": 8.0,
        f"{levels} levels packed (log2 {levels})": math.log2(levels),
        "PNG files, one per image (as decompressed)": 8 * png_files / dims,
        "PNG files, optimized": 8 * png_opt / dims,
        "one PNG strip of all images, optimized": 8 * len(strip.getvalue()) / dims,
        "xz (LZMA preset 9e) of the level array": 8 * len(xz) / dims,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="runs/digits", help="a trained digits checkpoint or run directory")
    ap.add_argument("--out", default="runs/compression")
    ap.add_argument("--steps", default="1000,100", help="chain lengths (comma-separated)")
    ap.add_argument("--grids", default="0", help="grid exponents for the first chain (comma-separated)")
    ap.add_argument("--sweep-grids", default="-1,0,1", help="grid exponents tried on the last (short) chain")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--limit", type=int, help="first N test images only")
    ap.add_argument("--analytic", default="", help="chain lengths also coded with Analytic-DPM's variance "
                    "(comma-separated; needs the Γ estimate of ddpm analytic-variance beside the checkpoint)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model = load_model(args.checkpoint)
    levels = model.diffusion.levels
    ds = digits_dataset("test", levels=levels)
    n = min(len(ds), args.limit or len(ds))
    images = np.stack([to_levels(ds[i], levels).numpy() for i in range(n)])
    steps_list = [int(s) for s in args.steps.split(",")]
    chains = [(steps, "model") for steps in steps_list] + \
        [(int(s), "analytic") for s in args.analytic.split(",") if s]
    gamma = read_estimate(args.checkpoint, model)[0] if args.analytic else None
    rows = []
    for k, (steps, variance) in enumerate(chains):
        g_var = gamma if variance == "analytic" else None
        nll, stderr = bound(model, images, steps, g_var)
        grids = args.sweep_grids if k == len(steps_list) - 1 else args.grids
        for g in (int(x) for x in grids.split(",")):
            c = compress(model, images, CodecOptions(steps=steps, batch_size=args.batch_size, grid_log2=g,
                                                     variance=variance), gamma=g_var)
            d = decompress(model, c.data, gamma=g_var)
            exact = bool(np.array_equal(d.images, images))
            row = dict(steps=steps, variance=variance, grid_log2=g, bound=nll, bound_stderr=stderr, file=c.bits_per_dim,
                       payload=c.payload_bits_per_dim, initial=c.initial_bits_per_dim,
                       header=8 * (len(c.data) - 4 * c.header.payload_words) / images.size,
                       vs_bound=c.bits_per_dim / nll - 1, bytes=len(c.data), exact=exact,
                       compress_img_s=n / c.seconds, decompress_img_s=n / d.seconds)
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = baselines(images, levels)
    table = markdown(rows, base, n, levels)
    (out / "compression.md").write_text(table)
    (out / "compression.json").write_text(json.dumps({"rows": rows, "baselines": base}, indent=2))
    print(table)


def markdown(rows: list[dict], base: dict[str, float], n: int, levels: int) -> str:
    """The results as markdown, with date and machine."""
    when = machine_line()
    lines = [f"Digits test split: {n} images of 8×8 at {levels} levels ({n * 64} values); {when}.", "",
             "| chain | variance | grid δ/σ | bound (`ddpm nll`) | file | file vs bound | of which start-up "
             "| header+CRC | exact | compress | decompress |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['steps']} steps | {r['variance']} | 2^{r['grid_log2']} | "
                     f"{r['bound']:.4f} ± {r['bound_stderr']:.4f} | "
                     f"{r['file']:.4f} | {100 * r['vs_bound']:+.2f}% | {r['initial']:.4f} | {r['header']:.4f} | "
                     f"{'yes' if r['exact'] else 'NO'} | {r['compress_img_s']:.2f} img/s | "
                     f"{r['decompress_img_s']:.2f} img/s |")
    lines += ["", "All in bits per pixel value (bits/dim).", "", "| other lossless codes | bits/dim |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in base.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
