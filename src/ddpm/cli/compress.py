"""``ddpm compress`` / ``ddpm decompress``: lossless image files <-> bits-back bitstreams (Algorithms 3-4)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from ..compression import CodecOptions
from ..loading import Weights
from ..outputs import OutputDir, OutputError, check_output_dir, check_output_file, marker_command, write_bytes
from .options import Flag, add_options, build
from .types import non_negative_int

if TYPE_CHECKING:
    from torch import Tensor

    from ..loading import LoadedModel

_EPILOG = ("The file records the model's hash, the image shape, count and levels, and the chain it was coded "
           "with; decompress with the same checkpoint and --weights, on the same kind of machine (network "
           "outputs must match bit for bit; the decoder verifies that they did).")


# help texts by field name; the defaults are CodecOptions' own. No --device: the coder runs on the CPU, where
# network outputs repeat bit for bit from sender to receiver (docs/compression.md)
CODEC_HELP = {
    "steps": "code a chain respaced to this many steps (default: all T; fewer is faster and costs the respaced "
             "bound, see ddpm nll --steps)",
    "batch_size": "most images coded side by side",
    "grid_log2": "latent grid δ_t = 2^N × the narrowest std coding x_t (0 codes the bound ddpm nll measures; "
                 "docs/compression.md measures others)",
    "window": "coding windows of ± N standard deviations",
    "clip_denoised": Flag("do not clip x̂₀ to [-1, 1] inside p_θ", names=("--no-clip",)),
    "variance": "reverse variance: the model's, or Analytic-DPM's σ*² from the Γ estimate stored beside the "
                "checkpoint by ddpm analytic-variance (a shorter file on a short chain: the bound of ddpm nll "
                "--steps K --variance analytic); the file records the choice and the estimate's hash",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="losslessly compress images with a trained model (bits-back ANS)",
                       description="Code images as bits-back ANS over the diffusion chain: the expected length is "
                                   "the model's variational bound (ddpm nll), plus a small start-up cost per file.",
                       epilog=_EPILOG)
    p.add_argument("inputs", nargs="+", help="8-bit PNG files or folders of them, at the model's size and levels")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory or run directory (its latest)")
    p.add_argument("--out", required=True, help="the compressed file to write")
    p.add_argument("--weights", choices=get_args(Weights), default="ema", help="EMA weights (default) or raw")
    add_options(p, CodecOptions, CODEC_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run_compress)

    p = sub.add_parser("decompress", help="decode a file from ddpm compress, with x̂₀ previews on the way",
                       description="Decode every image exactly (PNG files 000000.png, … in the order they were "
                                   "compressed); --previews K also writes x̂₀ (Eq. 15) at K points of the decode, "
                                   "as the receiver sees the image form (Fig. 6).", epilog=_EPILOG)
    p.add_argument("file", help="a file written by ddpm compress")
    p.add_argument("--checkpoint", required=True, help="the checkpoint it was compressed with")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--weights", choices=get_args(Weights), default="ema", help="EMA weights (default) or raw")
    p.add_argument("--previews", type=non_negative_int, default=0,
                   help="x̂₀ preview grids at K points of the decode (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="write into an --out that already holds other files")
    p.set_defaults(func=run_decompress)


def run_compress(args: argparse.Namespace) -> int:
    from ..compression import compress
    from ..compression.codec import image_shape
    from ..compression.files import expand_inputs, read_images
    from ..loading import load_model

    options = build(CodecOptions, args)  # checked
    out = check_output_file(args.out, args.overwrite)
    paths = expand_inputs(args.inputs)
    model = load_model(args.checkpoint, args.weights)
    c, size, _ = image_shape(model)
    images = read_images(paths, c, size, model.diffusion.levels)
    gamma = _stored_gamma(args.checkpoint, model) if options.variance == "analytic" else None
    result = compress(model, images, options, progress=not args.no_progress, gamma=gamma)
    write_bytes(out, result.data)
    raw = sum(p.stat().st_size for p in paths)
    coded = result.payload_bits_per_dim - result.initial_bits_per_dim
    print(f"compressed {len(paths)} images ({c}×{size}×{size}, {model.diffusion.levels} levels, "
          f"{result.header.steps}-step chain, {options.variance} variance) into {len(result.data)} bytes "
          f"(inputs: {raw} bytes) in {result.seconds:.1f} s -> {out}")
    # what the bits are: the chain's code (which approaches the bound), bits-back's start-up borrow, the header
    print(f"{result.bits_per_dim:.4f} bits/dim = {coded:.4f} coded + {result.initial_bits_per_dim:.4f} start-up "
          f"(bits borrowed before any were coded) + {result.bits_per_dim - result.payload_bits_per_dim:.4f} header and "
          f"checksum; compare the coded part with `ddpm nll --checkpoint {args.checkpoint} --steps "
          f"{result.header.steps}{' --variance analytic' if options.variance == 'analytic' else ''} --out DIR`, "
          "the bound it approaches")
    return 0


def _stored_gamma(checkpoint: str, model: LoadedModel) -> Tensor:
    """The Γ estimate stored beside the checkpoint for exactly this model (ddpm analytic-variance writes it)."""
    from ..evaluation.analytic_variance import read_estimate

    return read_estimate(checkpoint, model)[0]


def run_decompress(args: argparse.Namespace) -> int:
    import torch

    from ..compression import decompress
    from ..compression.codec import preview_times
    from ..compression.container import VARIANCES, read_file, unpack
    from ..compression.files import write_images
    from ..images import save_image_grid, to_display_uint8
    from ..loading import load_model

    path = Path(args.file)
    check_output_dir(args.out, "decompress", args.overwrite)
    data = read_file(path)  # a file that is not one, or of the wrong size, is refused before it is read
    header, _ = unpack(data, str(path))  # and a damaged one before the model loads
    model = load_model(args.checkpoint, args.weights)
    stale = _stale_outputs(Path(args.out), header.count, preview_times(model, header.steps, args.previews).values(),
                           args.overwrite)
    gamma = _stored_gamma(args.checkpoint, model) if VARIANCES[header.variance] == "analytic" else None
    result = decompress(model, data, args.previews, progress=not args.no_progress, name=str(path), gamma=gamma)
    with OutputDir(args.out, "decompress", overwrite=args.overwrite) as out:
        for old in stale:  # --overwrite: an earlier decode's files that this one does not replace
            old.unlink(missing_ok=True)
        write_images(out, result.images, result.header.levels)
        for t, x0 in result.previews.items():  # the first PREVIEW_IMAGES
            save_image_grid(out / "previews" / f"x0_t{t:04d}.png", to_display_uint8(torch.from_numpy(x0)))
    extra = f", {len(result.previews)} x̂₀ previews in {out / 'previews'}" if result.previews else ""
    print(f"decompressed {len(result.images)} images in {result.seconds:.1f} s -> {out}{extra}")
    return 0


_DECODED = re.compile(r"[0-9]{6}\.png")


def _stale_outputs(out: Path, count: int, preview_ts: Iterable[int], overwrite: bool) -> list[Path]:
    """Files of an earlier decode in ``out`` that this one would leave beside its own (images past ``count``,
    previews at other t), which would read as part of this file's output: refused, or with ``overwrite`` returned
    for removal — but only from a folder that ``ddpm decompress`` wrote, never a user's own files."""
    if not out.is_dir():
        return []
    ours = {f"x0_t{t:04d}.png" for t in preview_ts}
    stale = sorted(p for p in out.iterdir() if _DECODED.fullmatch(p.name) and int(p.name[:6]) >= count)
    if (out / "previews").is_dir():
        stale += sorted(p for p in (out / "previews").glob("x0_t*.png") if p.name not in ours)
    if not stale:
        return []
    named = ", ".join(str(p.relative_to(out)) for p in stale[:2]) + (f" and {len(stale) - 2} more" if len(stale) > 2
                                                                     else "")
    if not overwrite:
        raise OutputError(f"--out {out} holds files of an earlier decode ({named}) that this file's {count} images "
                          "would not replace; choose another --out or pass --overwrite to remove them")
    if marker_command(out) != "decompress":
        raise OutputError(f"--out {out} holds files ({named}) that this decode would not replace and that "
                          "ddpm decompress did not write; remove them or choose another --out")
    return stale

