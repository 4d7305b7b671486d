"""``ddpm convert``: diffusers DDPM directories (the official google/ddpm-* weights) to our checkpoints and back."""

from __future__ import annotations

import argparse

from ..checkpoint import inspect_checkpoint
from ..config import RunConfig
from ..interop.convert import save_import, to_diffusers
from ..interop.diffusers import load_diffusers


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="import/export diffusers DDPM checkpoints",
                       description="Convert a diffusers DDPMPipeline directory (e.g. google/ddpm-cifar10-32, "
                                   "downloaded beforehand) into a ddpm checkpoint, or a ddpm checkpoint into one.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-diffusers", metavar="DIR", help="diffusers pipeline directory to import")
    src.add_argument("--to-diffusers", metavar="CKPT", help="ddpm checkpoint (or run directory) to export")
    p.add_argument("--out", required=True, help="output checkpoint directory (import) or pipeline directory (export)")
    p.add_argument("--weights", choices=("ema", "model"), default=None,
                   help="with --to-diffusers: the weights to export (default: ema)")
    p.add_argument("--overwrite", action="store_true", help="replace an --out that already holds files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.from_diffusers:
        if args.weights is not None:
            raise ValueError(f"--weights {args.weights} applies to --to-diffusers only: a diffusers pipeline holds "
                             "one set of weights")
        imported = load_diffusers(args.from_diffusers)
        path = save_import(imported, args.from_diffusers, args.out, args.overwrite)
        print(f"imported {args.from_diffusers} → {path} (use it with ddpm sample/nll --checkpoint {path})")
        if not imported.clip_sample:
            print("note: its scheduler does not clip x̂₀ (clip_sample=false) and ddpm's samplers do: pass "
                  "--no-clip to ddpm sample/nll to sample as diffusers does")
    else:
        path = to_diffusers(args.to_diffusers, args.out, args.weights or "ema", args.overwrite)
        print(f"exported {args.to_diffusers} → {path} (DDPMPipeline.from_pretrained('{path}') loads it)")
        # the checkpoint's config from its meta.json alone: to_diffusers has loaded the weights once already
        if RunConfig.from_dict(inspect_checkpoint(args.to_diffusers).config).model.num_classes is not None:
            print("note: a class-conditional model: DDPMPipeline passes no class_labels, so sample it with "
                  "pipe.unet(x, t, class_labels=y) and pipe.scheduler.step in your own loop (class K = 'no class')")
    return 0
