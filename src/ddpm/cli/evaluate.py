"""``ddpm nll | rate-distortion | sample | progressive | interpolate | fid``: the paper's measurements and figures.

Argument parsing only: each command builds its options dataclasses and calls ``ddpm.evaluation``.
Every command except ``fid`` splits its work over processes under torchrun
(``python -m torch.distributed.run --nproc_per_node N -m ddpm.cli <command> ...``); rank 0 writes the results.
"""

from __future__ import annotations

import argparse
import sys

from ..evaluation.common import CommonOptions, DataChoice
from ..sampling import SAMPLER_NAMES, sampler_help
from ..schedules import SPACINGS
from .types import finite_float, int_list

# Values are checked by the options dataclasses (ddpm.evaluation), each refusal naming the option as spelled
# here, when the command builds them: before the model is loaded and before anything is written. Checks that
# need the model (t <= T, indices within the split) follow its loading, still before the first file.

_AFTER = ("Results (JSON/CSV), figures (PNG), args.json (the resolved options) and config.json (the model's "
          "config) are written to --out. Under torchrun each process takes a share and rank 0 writes.")


def add_common(p: argparse.ArgumentParser, batch_size: int = 64, out: str | None = None) -> None:
    """Options every evaluation command takes."""
    p.add_argument("--checkpoint", required=True, help="checkpoint directory or run directory (its latest)")
    p.add_argument("--out", default=out, required=out is None, help="output folder" +
                   (f" (default: ./{out})" if out else ""))
    p.add_argument("--weights", choices=("ema", "model"), default="ema", help="EMA weights (default) or raw")
    p.add_argument("--seed", type=int, default=0, help="seeds every noise draw, per item (default 0)")
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"items per network call (default {batch_size})")
    p.add_argument("--device", default="cpu",
                   help="cpu (default), cuda (cuda:LOCAL_RANK under torchrun), cuda:N or mps")
    p.add_argument("--limit", type=int, help="work on the first N items only")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--bf16", action="store_true", help="run the network in bfloat16 (autocast; the schedule "
                                                        "arithmetic stays float32/float64)")
    add_overwrite(p)


def add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --out that already holds other files (a run, another command's output)")


def add_data(p: argparse.ArgumentParser, split: str = "test") -> None:
    """Which data split; the dataset comes from the checkpoint's config unless overridden."""
    p.add_argument("--split", choices=("train", "test"), default=split, help=f"data split (default {split})")
    p.add_argument("--data", help="dataset path (replaces the config's data.path)")
    p.add_argument("--dataset", help="dataset kind (replaces the config's data.dataset): digits, cifar10, folder, "
                                     "lmdb, npz, toy2d")


def add_clip(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-clip", action="store_true", help="do not clip x̂₀ to [-1, 1] inside p_θ")


def common_options(args: argparse.Namespace) -> CommonOptions:
    return CommonOptions(args.checkpoint, args.out, args.weights, args.seed, args.batch_size, args.device, args.limit,
                         not args.no_progress, overwrite=args.overwrite, bf16=args.bf16)


def data_choice(args: argparse.Namespace) -> DataChoice:
    return DataChoice(args.split, args.data, args.dataset)


# --- nll -----------------------------------------------------------------------------------------

def register_nll(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("nll", help="test-set NLL: the full variational bound in bits/dim (Table 1)",
                       description="The full variational bound (Eq. 5) per image: L_T, every L_{t-1}, L_0, in "
                                   "bits/dim; mean ± standard error over the split. Writes nll.json, terms.csv, "
                                   "per_image.csv and terms.png.", epilog=_AFTER)
    add_common(p, batch_size=16)
    add_data(p)
    p.add_argument("--t-batch", type=int, default=10, help="times t per network call (default 10)")
    p.add_argument("--decoder", choices=("auto", "discretized", "continuous"), default="auto",
                   help="L_0: discretized (Eq. 13, images) or continuous (toy points); auto picks")
    p.add_argument("--save-terms", action="store_true", help="also write terms.npz (every term of every image)")
    p.add_argument("--steps", type=int, help="bound of the chain respaced to this many steps (default: all T)")
    p.add_argument("--variance", choices=("model", "analytic"), default="model",
                   help="reverse variance: the model's (default) or Analytic-DPM's optimal one from the Gamma "
                        "estimate beside the checkpoint (computed on the training split if missing)")
    p.add_argument("--n-images", type=int, help="training images for a Gamma estimate computed now (default 1000)")
    p.add_argument("--recompute", action="store_true", help="recompute and replace the stored Gamma estimate")
    add_clip(p)
    p.set_defaults(func=run_nll_cmd)


def run_nll_cmd(args: argparse.Namespace) -> int:
    from ..evaluation.nll import NLLOptions, run_nll

    r = run_nll(common_options(args), NLLOptions(data_choice(args), args.t_batch, not args.no_clip, args.decoder,
                                                 args.save_terms, args.steps, args.variance, args.n_images,
                                                 args.recompute))
    if r is not None:
        print(f"NLL {r.nll_bits_per_dim:.4f} ± {r.nll_stderr_bits_per_dim:.4f} bits/dim on {r.n_images} "
              f"{r.split} images (L_T {r.prior_bits_per_dim:.3e}, rate L_1..L_T {r.rate_bits_per_dim:.4f}, "
              f"distortion L_0 {r.distortion_bits_per_dim:.4f}) -> {args.out}/nll.json")
    return 0


# --- rate-distortion -----------------------------------------------------------------------------

def register_rate_distortion(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rate-distortion", help="rate (bits received) vs distortion (RMSE of x̂₀) (Fig. 5, Table 4)",
                       description="At each t: rate = L_T + L_{T-1} + ... + L_t bits/dim, distortion = RMSE on "
                                   "[0, 255] of x̂₀(x_t) (Eq. 15), x_t ~ q(x_t|x_0), over test images. The network "
                                   "runs at every t (the rate needs every term); --num-t chooses the rows "
                                   "reported (always with Table 4's points).", epilog=_AFTER)
    add_common(p, batch_size=16)
    add_data(p)
    p.add_argument("--num-t", type=int, help="report this many evenly spaced t (+ the paper's); default: every t")
    p.add_argument("--t-batch", type=int, default=10, help="times t per network call (default 10)")
    add_clip(p)
    p.set_defaults(func=run_rate_distortion_cmd)


def run_rate_distortion_cmd(args: argparse.Namespace) -> int:
    from ..evaluation.rate_distortion import RateDistortionOptions, run_rate_distortion

    r = run_rate_distortion(common_options(args), RateDistortionOptions(data_choice(args), args.num_t, args.t_batch,
                                                                        not args.no_clip))
    if r is not None:
        print(f"{r.n_images} {r.split} images, bound {r.nll_bits_per_dim:.4f} bits/dim")
        print("| T − t + 1 | rate (bits/dim) | distortion (RMSE [0, 255]) |\n|---|---|---|")
        for p in sorted((p for p in r.points if p.paper_point), key=lambda p: p.t):
            print(f"| {p.reverse_steps + 1} | {p.rate_bits_per_dim:.5f} | {p.rmse_0_255:.5f} |")
    return 0


# --- sample --------------------------------------------------------------------------------------

def register_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="draw samples (Algorithm 2, DDIM, DPM-Solver++) into an .npz and a grid",
                       description="N samples; sample i is seeded by (seed, i), so the images do not depend on\n"
                                   "--batch-size or the number of processes. Writes <name>.npz (key 'images',\n"
                                   "uint8 NHWC on 0..255), <name>.png and <name>.json.\n\nSamplers (--sampler):\n"
                                   + sampler_help(), epilog=_AFTER,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=64,
                   help="number of samples (default 64); spell it --num-samples under torchrun, whose own "
                        "parser finds --n ambiguous")
    p.add_argument("--sampler", choices=SAMPLER_NAMES, default="ancestral",
                   help="one of the samplers above (default: ancestral)")
    p.add_argument("--steps", type=int, help="reverse steps (default: all T; fewer: respaced by --spacing)")
    p.add_argument("--spacing", choices=SPACINGS, default="uniform",
                   help="which of the T steps a shorter chain uses: uniform (default), quadratic (denser near "
                        "t = 1) or logsnr (uniform in log-SNR)")
    p.add_argument("--eta", type=finite_float, default=0.0, help="DDIM η >= 0 (default 0: deterministic)")
    p.add_argument("--grid", type=int, default=100, help="samples shown in the PNG (default 100)")
    p.add_argument("--name", default="samples", help="file stem (default: samples)")
    add_clip(p)
    p.set_defaults(func=run_sample_cmd)


def run_sample_cmd(args: argparse.Namespace) -> int:
    from ..evaluation.samples import SampleOptions, SamplerSpec, run_sample

    spec = SamplerSpec(args.sampler, args.steps, args.eta, not args.no_clip, args.spacing)
    r = run_sample(common_options(args), SampleOptions(args.n, spec, args.grid, args.name))
    if r is not None:
        print(f"{r.n} samples ({r.sampler}, {r.steps} steps) in {r.seconds:.1f} s ({r.img_per_s:.2f} img/s, "
              f"{r.world_size} process(es)) -> {r.npz}")
    return 0


# --- progressive ---------------------------------------------------------------------------------

def register_progressive(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("progressive", help="x̂₀ along the reverse process (Fig. 6); samples sharing x_t (Fig. 7)",
                       description="Fig. 6: x̂₀ at chosen steps of one reverse process, one row per sample. Fig. 7: "
                                   "per test image and t, one frozen x_t and several samples of p_θ(x_0|x_t); "
                                   "rows are x_0 | x_t | samples.", epilog=_AFTER)
    add_common(p)
    add_data(p)
    p.add_argument("--rows", type=int, default=8, help="Fig. 6: samples (default 8)")
    p.add_argument("--at", type=int_list, help="Fig. 6: steps shown, e.g. 1000,750,500,250,1 (default: evenly "
                                               "spaced, --columns of them)")
    p.add_argument("--columns", type=int, default=10, help="Fig. 6: number of steps without --at (default 10)")
    p.add_argument("--share-t", type=int_list, help="Fig. 7: times of the frozen x_t (default T,3T/4,T/2,T/4)")
    p.add_argument("--share-samples", type=int, default=3, help="Fig. 7: samples per x_t (default 3)")
    p.add_argument("--images", type=int_list, help="Fig. 7: test-image indices (default: the first --share-images)")
    p.add_argument("--share-images", type=int, default=2, help="Fig. 7: number of test images (default 2)")
    add_clip(p)
    p.set_defaults(func=run_progressive_cmd)


def run_progressive_cmd(args: argparse.Namespace) -> int:
    from ..evaluation.progressive import ProgressiveOptions, run_progressive

    options = ProgressiveOptions(args.rows, args.at, args.columns, args.share_t, args.share_samples, args.images,
                                 args.share_images, data_choice(args), not args.no_clip)
    r = run_progressive(common_options(args), options)
    if r is not None:
        print(f"Fig. 6 at t = {list(r.at)} -> {r.progressive_png}\nFig. 7 at t = {list(r.share_t)} for test "
              f"images {list(r.image_indices)} -> {r.shared_png}")
    return 0


# --- interpolate ---------------------------------------------------------------------------------

def register_interpolate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("interpolate", help="interpolate two test images in x_t (Sec. 4.4, Fig. 8)",
                       description="Encode two test images to x_t with shared noise, mix linearly over a λ grid, "
                                   "decode each mix with the reverse process. Rows: x_0 | λ = 0 ... 1 | x'_0.",
                       epilog=_AFTER)
    add_common(p)
    add_data(p)
    p.add_argument("--t", type=int_list, help="mixing time(s) (default 500, or T/2); several give one row each")
    p.add_argument("--lambdas", type=int, default=11, help="λ grid size over [0, 1] (default 11)")
    p.add_argument("--pairs", type=int, default=2, help="random pairs without --indices (default 2)")
    p.add_argument("--indices", type=int_list, help="explicit pairs of test-image indices: a,b[,c,d,...]")
    add_clip(p)
    p.set_defaults(func=run_interpolate_cmd)


def run_interpolate_cmd(args: argparse.Namespace) -> int:
    from ..evaluation.interpolation import InterpolateOptions, run_interpolate

    options = InterpolateOptions(args.t, args.lambdas, args.pairs, args.indices, data_choice(args), not args.no_clip)
    r = run_interpolate(common_options(args), options)
    if r is not None:
        print(f"{len(r.pairs)} pair(s) {list(r.pairs)} at t = {list(r.t)}, {len(r.lambdas)} λ -> {r.png}")
    return 0


# --- fid -----------------------------------------------------------------------------------------

def register_fid(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fid", help="FID/IS of an .npz of samples, or the digits metric for digits models",
                       description="FID (and Inception Score) of --samples against the checkpoint's dataset "
                                   "(--split, default train) or a statistics file (--ref-stats), through "
                                   "torchmetrics + torch-fidelity's Inception. For digits models (or --digits): "
                                   "the offline digits Fréchet distance and classifier score beside the "
                                   "real-vs-real baseline. Runs on one process (rank 0 under torchrun).",
                       epilog="Writes fid.json or digits_quality.json, samples_preview.png, args.json, config.json.")
    p.add_argument("--samples", required=True, help=".npz of uint8 samples (key 'images'), e.g. from ddpm sample")
    p.add_argument("--checkpoint", help="the model; its data section names the reference dataset")
    p.add_argument("--out", default="fid", help="output folder (default: ./fid)")
    p.add_argument("--ref-stats", help="precomputed reference statistics (.npz with mu, sigma)")
    p.add_argument("--save-stats", help="save the reference statistics computed from the dataset here")
    p.add_argument("--inception-weights", help="local torch-fidelity Inception weights file (no download)")
    p.add_argument("--digits", action=argparse.BooleanOptionalAction, default=None,
                   help="digits metric instead of FID (default: when the checkpoint's dataset is digits)")
    p.add_argument("--is-splits", type=int, default=10, help="Inception Score splits (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    p.add_argument("--limit", type=int, help="use the first N samples")
    add_overwrite(p)
    add_data(p, split="train")
    p.set_defaults(func=run_fid_cmd)


def run_fid_cmd(args: argparse.Namespace) -> int:
    from ..evaluation.fid import FidDependencyError
    from ..evaluation.quality import FidOptions, run_fid

    options = FidOptions(args.samples, args.out, args.checkpoint, args.ref_stats, data_choice(args),
                         args.inception_weights, args.digits, args.save_stats, args.is_splits, args.seed,
                         args.batch_size, args.device, args.limit, overwrite=args.overwrite)
    try:
        r = run_fid(options)
    except FidDependencyError as e:
        print(f"ddpm fid: error: {e}", file=sys.stderr)
        return 2
    if r is None:
        return 0
    if r.digits is not None:
        q = r.digits
        print(f"digits Fréchet distance {q.fd:.3f} (real vs real {q.fd_real_vs_real:.3f}), class score "
              f"{q.class_score:.3f} (real {q.class_score_real:.3f}), confidence {q.confidence:.3f} "
              f"(real {q.confidence_real:.3f}), {q.n_samples} samples -> {r.json}")
    elif r.fid is not None:
        f = r.fid
        is_text = f", IS {f.inception_score_mean:.3f} ± {f.inception_score_std or 0:.3f}" \
            if f.inception_score_mean is not None else ""
        print(f"FID {f.fid:.3f}{is_text} ({f.n_samples} samples, {f.extractor}) -> {r.json}")
    return 0


# --- analytic-variance ---------------------------------------------------------------------------

def register_analytic_variance(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analytic-variance", help="Analytic-DPM's Gamma estimate, stored beside the checkpoint",
                       description="Gamma_t = E||eps_theta(x_t, t)||^2/d for every t by Monte Carlo over training "
                                   "images (Bao et al. 2022), written beside the checkpoint as "
                                   "<checkpoint>.analytic-<weights>.safetensors and .json (with the model's hash). "
                                   "Used by --sampler analytic-ddpm|analytic-ddim and nll --variance analytic.")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory or run directory (its latest)")
    p.add_argument("--weights", choices=("ema", "model"), default="ema", help="EMA weights (default) or raw")
    p.add_argument("--n-images", type=int, help="training images to average over (default 1000, at most the split)")
    p.add_argument("--recompute", action="store_true", help="replace an estimate already stored")
    p.add_argument("--seed", type=int, default=0, help="seeds the noise draws (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="images per network call (default 64)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    add_data(p, split="train")
    p.set_defaults(func=run_analytic_variance_cmd)


def run_analytic_variance_cmd(args: argparse.Namespace) -> int:
    from ..evaluation.analytic_variance import run_analytic_variance

    path, gamma = run_analytic_variance(args.checkpoint, args.weights, args.n_images, args.seed, args.batch_size,
                                        args.device, data_choice(args), args.recompute)
    print(f"Gamma_t for t = 1..{gamma.numel()} (from {gamma.min().item():.4f} to {gamma.max().item():.4f}) -> {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the evaluation subcommands."""
    for add in (register_nll, register_rate_distortion, register_sample, register_progressive, register_interpolate,
                register_fid, register_analytic_variance):
        add(sub)
