"""``ddpm nll | rate-distortion | sample | progressive | interpolate | fid``: the paper's measurements and figures.

Argument parsing only: each command adds the fields of its options dataclasses as options (``cli.options``: the
default, type and choices of each come from its field) and builds them by name, then calls ``ddpm.evaluation``.
Every command except ``fid`` and ``analytic-variance`` splits its work over processes under torchrun
(``python -m torch.distributed.run --nproc_per_node N -m ddpm.cli <command> ...``); rank 0 writes the results.
"""

from __future__ import annotations

import argparse
import sys

from ..evaluation.analytic_variance import DEFAULT_IMAGES, AnalyticVarianceOptions
from ..evaluation.common import CommonOptions, DataChoice
from ..sampling import SAMPLER_NAMES, sampler_help
from .options import DEVICE_HELP, Flag, add_options, build

# Values are checked by the options dataclasses (ddpm.evaluation), each refusal naming the option as spelled
# here, when the command builds them: before the model is loaded and before anything is written. Checks that
# need the model (t <= T, indices within the split) follow its loading, still before the first file.

_AFTER = ("Results (JSON/CSV), figures (PNG), args.json (the resolved options) and config.json (the model's "
          "config) are written to --out. Under torchrun each process takes a share and rank 0 writes.")

# help texts by field name; the defaults are the dataclasses' own, appended by add_options
_OVERWRITE = {"overwrite": "write into an --out that already holds other files (a run, another command's output)"}
COMMON_HELP = {
    "checkpoint": "checkpoint directory or run directory (its latest)",
    "out": "output folder",
    "weights": "the EMA weights (what the paper evaluates) or the raw ones",
    "seed": "seeds every noise draw, per item",
    "batch_size": "items per network call",
    "device": DEVICE_HELP,
    "limit": "work on the first LIMIT items only (a quick subset)",
    "progress": "no progress bars",
    "bf16": "run the network in bfloat16 (autocast; the schedule arithmetic stays float32/float64)",
    **_OVERWRITE,
}
DATA_HELP = {
    "split": "data split",
    "path": Flag("dataset path (replaces the config's data.path)", names=("--data",)),
    "dataset": "dataset kind (replaces the config's data.dataset): digits, cifar10, folder, lmdb, npz, toy2d",
}
_CLIP = {"clip_denoised": Flag("do not clip x̂₀ (Eq. 15) to [-1, 1] inside p_θ", names=("--no-clip",))}
_BOUND_BATCH = {"batch_size": 16}  # the bound commands' network calls each take --t-batch times t as well


def add_common(p: argparse.ArgumentParser, defaults: dict[str, object] | None = None) -> None:
    """Options every evaluation command takes (CommonOptions), with this command's own ``defaults``."""
    add_options(p, CommonOptions, COMMON_HELP, defaults)


def add_overwrite(p: argparse.ArgumentParser) -> None:
    add_options(p, CommonOptions, _OVERWRITE)


def add_data(p: argparse.ArgumentParser, split: str = "test") -> None:
    """Which data split; the dataset comes from the checkpoint's config unless overridden."""
    add_options(p, DataChoice, DATA_HELP, {"split": split})


def common_options(args: argparse.Namespace) -> CommonOptions:
    return build(CommonOptions, args)


def data_choice(args: argparse.Namespace) -> DataChoice:
    return build(DataChoice, args)


# --- nll -----------------------------------------------------------------------------------------

NLL_HELP = {
    "t_batch": "times t per network call",
    "decoder": "L_0: discretized (Eq. 13, images) or a Gaussian density (continuous toy points); auto: by the data",
    "save_terms": "also write terms.npz (every term of every image)",
    "steps": "bound of the chain respaced to this many steps (default: all T)",
    "variance": "reverse variance: the model's or Analytic-DPM's optimal one from the Γ estimate beside the "
                "checkpoint (computed on the training split if missing)",
    "n_images": f"training images for a Γ estimate computed now (default: {DEFAULT_IMAGES})",
    "recompute": "recompute and replace the stored Γ estimate",
    **DATA_HELP, **_CLIP,
}


def register_nll(sub: argparse._SubParsersAction) -> None:
    from ..evaluation.nll import NLLOptions

    p = sub.add_parser("nll", help="test-set NLL: the full variational bound in bits/dim (Table 1)",
                       description="The full variational bound (Eq. 5) per image: L_T, every L_{t-1}, L_0, in "
                                   "bits/dim; mean ± standard error over the split. Writes nll.json, terms.csv, "
                                   "per_image.csv and terms.png.", epilog=_AFTER)
    add_common(p, _BOUND_BATCH)
    add_options(p, NLLOptions, NLL_HELP)
    p.set_defaults(func=run_nll_cmd)


def run_nll_cmd(args: argparse.Namespace) -> int:
    from ..evaluation.nll import NLLOptions, run_nll

    r = run_nll(common_options(args), build(NLLOptions, args))
    if r is not None:
        print(f"{'conditional NLL (each image under its own label)' if r.conditional else 'NLL'} "
              f"{r.nll_bits_per_dim:.4f} ± {r.nll_stderr_bits_per_dim:.4f} bits/dim on {r.n_images} "
              f"{r.split} images (L_T {r.prior_bits_per_dim:.3e}, rate L_1..L_T {r.rate_bits_per_dim:.4f}, "
              f"distortion L_0 {r.distortion_bits_per_dim:.4f}) -> {args.out}/nll.json")
    return 0


# --- rate-distortion -----------------------------------------------------------------------------

RATE_DISTORTION_HELP = {
    "num_t": "report this many evenly spaced t (+ the paper's); default: every t",
    "t_batch": "times t per network call",
    **DATA_HELP, **_CLIP,
}


def register_rate_distortion(sub: argparse._SubParsersAction) -> None:
    from ..evaluation.rate_distortion import RateDistortionOptions

    p = sub.add_parser("rate-distortion", help="rate (bits received) vs distortion (RMSE of x̂₀) (Fig. 5, Table 4)",
                       description="At each t: rate = L_T + L_{T-1} + ... + L_t bits/dim, distortion = RMSE on "
                                   "[0, 255] of x̂₀(x_t) (Eq. 15), x_t ~ q(x_t|x_0), over test images. The network "
                                   "runs at every t (the rate needs every term); --num-t chooses the rows "
                                   "reported (always with Table 4's points).", epilog=_AFTER)
    add_common(p, _BOUND_BATCH)
    add_options(p, RateDistortionOptions, RATE_DISTORTION_HELP)
    p.set_defaults(func=run_rate_distortion_cmd)


def run_rate_distortion_cmd(args: argparse.Namespace) -> int:
    from ..evaluation.rate_distortion import RateDistortionOptions, run_rate_distortion

    r = run_rate_distortion(common_options(args), build(RateDistortionOptions, args))
    if r is not None:
        print(f"{r.n_images} {r.split} images, bound {r.nll_bits_per_dim:.4f} bits/dim")
        print("| T − t + 1 | rate (bits/dim) | distortion (RMSE [0, 255]) |\n|---|---|---|")
        for p in sorted((p for p in r.points if p.paper_point), key=lambda p: p.t):
            print(f"| {p.reverse_steps + 1} | {p.rate_bits_per_dim:.5f} | {p.rmse_0_255:.5f} |")
    return 0


# --- sample --------------------------------------------------------------------------------------

SAMPLE_HELP = {
    "n": Flag("number of samples; spell it --num-samples under torchrun, whose own parser finds --n ambiguous",
              names=("--n", "--num-samples")),
    "sampler": Flag("one of the samplers above", choices=SAMPLER_NAMES),
    "steps": "reverse steps (default: all T; fewer: respaced by --spacing)",
    "spacing": "which of the T steps a shorter chain (--steps) uses: uniform, quadratic (denser near t = 1) or logsnr "
               "(uniform in log-SNR) (default: the sampler's, logsnr for the DPM-Solver++ family, uniform for the "
               "others)",
    "eta": "DDIM η >= 0 (σ_t of Song et al.'s Eq. 16); 0 is deterministic, 1 is σ_t² = β̃_t",
    "grid": "samples shown in the PNG (with --class all: one row per class, grid/K of each)",
    "name": "file stem",
    "classes": Flag("a class-conditional model's class, by name or index, or 'all' (--n of each class, one PNG "
                    "row per class); without it the model's 'no class' input samples p(x)", names=("--class",)),
    "guidance": "classifier-free guidance weight w: (1 + w)·ε(x, c) − w·ε(x, no class) (Ho & Salimans' w; "
                "diffusers' guidance_scale is 1 + w); 0 is the conditional model; w > 0 runs the network on twice "
                "--batch-size inputs per call",
    **_CLIP,
}


def register_sample(sub: argparse._SubParsersAction) -> None:
    from ..evaluation.samples import SampleOptions

    p = sub.add_parser("sample", help="draw samples (Algorithm 2, DDIM, DPM-Solver++) into an .npz and a grid",
                       description="N samples; sample i is seeded by (seed, i), so the images do not depend on\n"
                                   "--batch-size or the number of processes. Writes <name>.npz (key 'images',\n"
                                   "uint8 NHWC on 0..255; 'points', float32, for a toy model; 'labels' and\n"
                                   "'class_names' beside them with --class), <name>.png and <name>.json (what was\n"
                                   "drawn, with the seed, checkpoint and weights).\n\nSamplers (--sampler):\n"
                                   + sampler_help(), epilog=_AFTER,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    add_options(p, SampleOptions, SAMPLE_HELP)
    p.set_defaults(func=run_sample_cmd)


def run_sample_cmd(args: argparse.Namespace) -> int:
    from ..evaluation.samples import SampleOptions, run_sample

    r = run_sample(common_options(args), build(SampleOptions, args))
    if r is not None:
        print(f"{r.n} samples ({r.sampler}, {r.steps} steps) in {r.seconds:.1f} s ({r.img_per_s:.2f} img/s, "
              f"{r.world_size} process(es)) -> {r.npz}")
    return 0


# --- progressive ---------------------------------------------------------------------------------

PROGRESSIVE_HELP = {
    "rows": "Fig. 6: samples",
    "at": "Fig. 6: steps shown, e.g. 1000,750,500,250,1 (default: evenly spaced, --columns of them)",
    "columns": "Fig. 6: number of steps without --at",
    "share_t": "Fig. 7: times of the frozen x_t (default: T,3T/4,T/2,T/4)",
    "share_samples": "Fig. 7: samples per x_t",
    "images": "Fig. 7: test-image indices (default: the first --share-images)",
    "share_images": "Fig. 7: number of test images",
    **DATA_HELP, **_CLIP,
}


def register_progressive(sub: argparse._SubParsersAction) -> None:
    from ..evaluation.progressive import ProgressiveOptions

    p = sub.add_parser("progressive", help="x̂₀ along the reverse process (Fig. 6); samples sharing x_t (Fig. 7)",
                       description="Fig. 6: x̂₀ at chosen steps of one reverse process, one row per sample. Fig. 7: "
                                   "per test image and t, one frozen x_t and several samples of p_θ(x_0|x_t); "
                                   "rows are x_0 | x_t | samples.", epilog=_AFTER)
    add_common(p)
    add_options(p, ProgressiveOptions, PROGRESSIVE_HELP)
    p.set_defaults(func=run_progressive_cmd)


def run_progressive_cmd(args: argparse.Namespace) -> int:
    from ..evaluation.progressive import ProgressiveOptions, run_progressive

    r = run_progressive(common_options(args), build(ProgressiveOptions, args))
    if r is not None:
        print(f"Fig. 6 at t = {list(r.at)} -> {r.progressive_png}\nFig. 7 at t = {list(r.share_t)} for test "
              f"images {list(r.image_indices)} -> {r.shared_png}")
    return 0


# --- interpolate ---------------------------------------------------------------------------------

INTERPOLATE_HELP = {
    "t": "mixing time(s) (default: 500 for T = 1000, else T/2); several give one row each",
    "lambdas": "λ grid size over [0, 1]",
    "pairs": "random pairs without --indices",
    "indices": "explicit pairs of test-image indices: a,b[,c,d,...]",
    **DATA_HELP, **_CLIP,
}


def register_interpolate(sub: argparse._SubParsersAction) -> None:
    from ..evaluation.interpolation import InterpolateOptions

    p = sub.add_parser("interpolate", help="interpolate two test images in x_t (Sec. 4.4, Fig. 8)",
                       description="Encode two test images to x_t with shared noise, mix linearly over a λ grid, "
                                   "decode each mix with the reverse process. Rows: x_0 | λ = 0 ... 1 | x'_0.",
                       epilog=_AFTER)
    add_common(p)
    add_options(p, InterpolateOptions, INTERPOLATE_HELP)
    p.set_defaults(func=run_interpolate_cmd)


def run_interpolate_cmd(args: argparse.Namespace) -> int:
    from ..evaluation.interpolation import InterpolateOptions, run_interpolate

    r = run_interpolate(common_options(args), build(InterpolateOptions, args))
    if r is not None:
        print(f"{len(r.pairs)} pair(s) {list(r.pairs)} at t = {list(r.t)}, {len(r.lambdas)} λ -> {r.png}")
    return 0


# --- fid -----------------------------------------------------------------------------------------

FID_HELP = {
    "samples": ".npz of uint8 samples (key 'images'), e.g. from ddpm sample",
    "checkpoint": "the model; its data section names the reference dataset",
    "out": "output folder",
    "reference_stats": Flag("precomputed reference statistics (.npz with mu, sigma)", names=("--ref-stats",)),
    "save_stats": "save the reference statistics computed from the dataset here",
    "inception_weights": "local torch-fidelity Inception weights file (no download)",
    "digits": "digits metric instead of FID (default: when the checkpoint's dataset is digits)",
    "is_splits": "Inception Score splits",
    "seed": "seeds the Inception Score's split permutation and the digits metric",
    "batch_size": "images per feature-extractor call",
    "device": DEVICE_HELP,
    "limit": "use the first LIMIT samples",
    "overwrite": "write into an --out (or over a --save-stats file) that holds other files",
    **DATA_HELP,
}


def register_fid(sub: argparse._SubParsersAction) -> None:
    from ..evaluation.quality import FidOptions

    p = sub.add_parser("fid", help="FID/IS of an .npz of samples, or the digits metric for digits models",
                       description="FID (and Inception Score) of --samples against the checkpoint's dataset "
                                   "(--split, default train) or a statistics file (--ref-stats), through "
                                   "torchmetrics' Inception features and our own float64 moments. For digits "
                                   "models (or --digits): the offline digits Fréchet distance and classifier score "
                                   "beside the real-vs-real baseline. Runs on one process (rank 0 under torchrun).",
                       epilog="Writes fid.json or digits_quality.json, samples_preview.png, args.json, config.json.")
    add_options(p, FidOptions, FID_HELP)
    p.set_defaults(func=run_fid_cmd)


def run_fid_cmd(args: argparse.Namespace) -> int:
    from ..evaluation.digits_metric import real_fd_text
    from ..evaluation.fid import FidDependencyError
    from ..evaluation.quality import FidOptions, run_fid

    options = build(FidOptions, args)
    try:
        r = run_fid(options)
    except FidDependencyError as e:
        print(f"ddpm fid: error: {e}", file=sys.stderr)
        return 2
    if r is None:
        return 0
    if r.digits is not None:
        q = r.digits
        print(f"digits Fréchet distance {q.fd:.3f} ({real_fd_text(q)}), class score "
              f"{q.class_score:.3f} (real {q.class_score_real:.3f}), confidence {q.confidence:.3f} "
              f"(real {q.confidence_real:.3f}), {q.n_samples} samples -> {r.json}")
    elif r.fid is not None:
        f = r.fid
        is_text = f", IS {f.inception_score_mean:.3f} ± {f.inception_score_std or 0:.3f}" \
            if f.inception_score_mean is not None else ""
        print(f"FID {f.fid:.3f}{is_text} ({f.n_samples} samples, {f.extractor}) -> {r.json}")
    return 0


# --- analytic-variance ---------------------------------------------------------------------------

ANALYTIC_VARIANCE_HELP = {
    **COMMON_HELP,
    "seed": "seeds the noise draws",
    "batch_size": "images per network call",
    "n_images": f"training images to average over (default: {DEFAULT_IMAGES}, at most the split)",
    "recompute": "replace an estimate already stored",
    **DATA_HELP,
}


def register_analytic_variance(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analytic-variance", help="Analytic-DPM's Γ estimate, stored beside the checkpoint",
                       description="Γ_t = E‖ε_θ(x_t, t)‖²/d for every t by Monte Carlo over training "
                                   "images (Bao et al. 2022), written beside the checkpoint as "
                                   "<checkpoint>.analytic-<weights>.safetensors and .json (with the model's hash). "
                                   "Used by --sampler analytic-ddpm|analytic-ddim and nll --variance analytic.")
    add_options(p, AnalyticVarianceOptions, ANALYTIC_VARIANCE_HELP)
    p.set_defaults(func=run_analytic_variance_cmd)


def run_analytic_variance_cmd(args: argparse.Namespace) -> int:
    from ..evaluation.analytic_variance import run_analytic_variance
    from ..processes import is_main_process

    path, gamma = run_analytic_variance(build(AnalyticVarianceOptions, args))
    if not is_main_process():
        return 0  # every rank has the same estimate (from rank 0): one line says so
    print(f"Gamma_t for t = 1..{gamma.numel()} (from {gamma.min().item():.4f} to {gamma.max().item():.4f}) -> {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the evaluation subcommands."""
    for add in (register_nll, register_rate_distortion, register_sample, register_progressive, register_interpolate,
                register_fid, register_analytic_variance):
        add(sub)
