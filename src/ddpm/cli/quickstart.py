"""``ddpm quickstart``: train, sample, evaluate and report on the embedded digits, on a laptop CPU."""

from __future__ import annotations

import argparse

from ..quickstart import QuickstartOptions, quickstart


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="train on scikit-learn's digits, sample, evaluate, write a report",
                       description="The main job: train the `digits` preset (L_simple, EMA), sample 256 digits "
                                   "with Algorithm 2 and with DDIM, measure test bits/dim and sample quality, "
                                   "and write an HTML report.")
    p.add_argument("--out", default="quickstart", help="output folder (default: ./quickstart)")
    p.add_argument("--steps", type=int, help="training steps (default: the digits preset's)")
    p.add_argument("--samples", type=int, default=256, help="samples per sampler (default 256)")
    p.add_argument("--ddim-steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--nll-images", type=int, help="test images for bits/dim (default: all 180)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="train afresh into an --out that holds an earlier quickstart (its run is deleted)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = QuickstartOptions(steps=args.steps, n_samples=args.samples, ddim_steps=args.ddim_steps,
                                nll_images=args.nll_images, seed=args.seed, progress=not args.no_progress,
                                overwrite=args.overwrite)
    r = quickstart(args.out, options)
    a, d = r.ancestral, r.ddim
    print(f"test NLL: {r.test_nll_bits_per_dim:.3f} ± {r.test_nll_stderr:.3f} bits/dim (full bound)")
    print(f"ancestral ({a['steps']} steps): Fréchet distance {a['fd']:.2f} (real vs real {a['fd_real_vs_real']:.2f}), "
          f"confidence {a['confidence']:.3f} (real {a['confidence_real']:.3f})")
    print(f"DDIM ({d['steps']} steps):      Fréchet distance {d['fd']:.2f} (real vs real {d['fd_real_vs_real']:.2f}), "
          f"confidence {d['confidence']:.3f} (real {d['confidence_real']:.3f})")
    print(f"report: {r.out_dir}/report.html")
    return 0
