"""``ddpm quickstart``: train, sample, evaluate and report on the embedded digits, on a laptop CPU."""

from __future__ import annotations

import argparse

from ..evaluation.digits_metric import real_fd_text
from ..quickstart import COMPARED, QuickstartOptions, quickstart
from ..sampling import SAMPLERS
from .options import DEVICE_HELP, Flag, add_options, build

# help texts by field name (t_per_batch is no option); the defaults are QuickstartOptions' own
HELP = {
    "steps": "training steps (default: the digits preset's)",
    "n_samples": Flag("samples per sampler", names=("--samples",)),
    "sampler": Flag("the few-step sampler shown beside Algorithm 2",
                    choices=tuple(k for k, v in SAMPLERS.items() if not v.needs_gamma)),
    "sampler_steps": "its steps (network evaluations per sample)",
    "spacing": "which of the T steps the few-step samplers take",
    "compare_steps": f"step counts at which {', '.join(COMPARED)} are compared (comma-separated)",
    "nll_images": "test images for bits/dim (default: all 180)",
    "seed": "seeds training, sampling and evaluation",
    "progress": "no progress bars",
    "device": DEVICE_HELP,
    "overwrite": "train afresh into an --out that holds an earlier quickstart (its run is deleted)",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="train on scikit-learn's digits, sample, evaluate, write a report",
                       description="The main job: train the `digits` preset (L_simple, EMA), sample digits "
                                   "with Algorithm 2 and with few-step samplers, measure test bits/dim and sample "
                                   "quality, "
                                   "and write an HTML report.")
    p.add_argument("--out", default="quickstart", help="output folder (default: ./quickstart)")
    add_options(p, QuickstartOptions, HELP)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    r = quickstart(args.out, build(QuickstartOptions, args))
    a, d = r.ancestral, r.few_step
    print(f"test NLL: {r.test_nll_bits_per_dim:.3f} ± {r.test_nll_stderr:.3f} bits/dim (full bound)")
    print(f"ancestral ({a['steps']} steps): Fréchet distance {a['fd']:.2f} ({real_fd_text(a)}), "
          f"confidence {a['confidence']:.3f} (real {a['confidence_real']:.3f})")
    print(f"{d['sampler']} ({d['steps']} steps): Fréchet distance {d['fd']:.2f} ({real_fd_text(d)}), "
          f"confidence {d['confidence']:.3f} (real {d['confidence_real']:.3f})")
    print(f"report: {r.out_dir}/report.html")
    return 0
