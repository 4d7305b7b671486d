"""Negative log-likelihood (Table 1's NLL column): the full variational bound (Eq. 5) in bits/dim on a data split
(for a class-conditional model, the bound on −log p(x_0 | y) with each image's own label).

Every image gets its own noise stream, seeded by (seed, image index), so the numbers do not depend on the
batch size, on ``t_per_batch`` or on how many processes share the work. The pass also records x̂₀'s error at
every t, from which ``rate_distortion`` draws Fig. 5 without a second pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import ConfigError, check_int, shown
from ..diffusion import Decoder, GaussianDiffusion, Model
from ..outputs import write_npz
from ..rng import Noise, per_item
from ..sampling import Conditioned
from ..sampling.analytic import VarianceChoice
from .common import (
    CommonOptions,
    DataChoice,
    Session,
    batched,
    check_model_classes,
    is_image_model,
    limited,
    load_split,
    mean_and_stderr,
    session,
    stack_items,
    write_csv,
    write_json,
    write_run_info,
)
from .figures import plot_bound_terms
from .parallel import gather_to_main, shard

Tensor = torch.Tensor
DecoderChoice = Literal["auto", "discretized", "continuous"]
ImageSource = Sequence[Tensor] | torch.utils.data.Dataset


@dataclass
class BoundTotals:
    """Per-image bound totals and per-t sums of the bound's terms over a set of images (bits/dim)."""

    indices: Tensor          # (N,) image indices in the split
    total_bpd: Tensor        # (N,) L_T + Σ_{t>1} L_{t−1} + L_0
    prior_bpd: Tensor        # (N,) L_T
    decoder_bpd: Tensor      # (N,) L_0 = −log p_θ(x_0|x_1)
    term_sum: Tensor         # (T,) Σ over images of L_{t−1}, index t − 1
    term_sq_sum: Tensor      # (T,) Σ over images of L_{t−1}²
    x0_mse_sum: Tensor       # (T,) Σ over images of mean_pixels (x̂₀(x_t) − x₀)² on the [-1, 1] scale
    terms_bpd: Tensor | None = None  # (N, T) every term of every image, when kept

    @property
    def n(self) -> int:
        return int(self.indices.numel())

    @property
    def T(self) -> int:
        return int(self.term_sum.numel())


def resolve_decoder(decoder: DecoderChoice, image_model: bool) -> Decoder:
    """"auto": Eq. 13's discretized decoder for images, the Gaussian density for continuous (toy) data."""
    if decoder == "auto":
        return "discretized" if image_model else "continuous"
    return decoder


@torch.no_grad()
def bound_totals(model: Model, diffusion: GaussianDiffusion, images: ImageSource, indices: Sequence[int],
                 seed: int = 0, batch_size: int = 64, t_per_batch: int = 1, clip_denoised: bool = True,
                 decoder: Decoder = "discretized", keep_terms: bool = False,
                 device: torch.device | str = "cpu", progress: bool = False,
                 labels: Sequence[int] | np.ndarray | None = None) -> BoundTotals:
    """The full bound (Eq. 5) of ``images[i]`` for i in ``indices``, term by term, batched over images and t.

    ``labels`` (one per item of ``images``) make it the conditional bound of a class-conditional model: image i
    under its own label, −log p_θ(x_0 | y_i) ≤ the bound.
    """
    if t_per_batch < 1:
        raise ValueError(f"t_per_batch must be >= 1, got {t_per_batch}")
    T = diffusion.T
    parts: dict[str, list[Tensor]] = {"total": [], "prior": [], "decoder": [], "terms": []}
    term_sum = torch.zeros(T, dtype=torch.float64)
    term_sq_sum = torch.zeros(T, dtype=torch.float64)
    mse_sum = torch.zeros(T, dtype=torch.float64)
    chunks = math.ceil(T / t_per_batch)
    bar = tqdm(total=math.ceil(len(indices) / batch_size) * chunks, desc="bound", disable=not progress,
               leave=False)
    for batch_idx in batched(indices, batch_size):
        x0 = stack_items(images, batch_idx).to(device)
        m = model if labels is None else Conditioned(model, torch.as_tensor(np.asarray(labels)[list(batch_idx)]))
        terms = _batch_terms(m, diffusion, x0, per_item(seed, "nll", batch_idx), t_per_batch, clip_denoised,
                             decoder, bar, mse_sum)
        prior = diffusion.prior_bpd(x0).double().cpu()
        term_sum += terms.sum(0)
        term_sq_sum += (terms**2).sum(0)
        parts["total"].append(prior + terms.sum(1))
        parts["prior"].append(prior)
        parts["decoder"].append(terms[:, 0])
        if keep_terms:
            parts["terms"].append(terms.float())
    bar.close()
    empty = torch.zeros(0, dtype=torch.float64)
    cat = {k: torch.cat(v) if v else empty for k, v in parts.items()}
    return BoundTotals(torch.as_tensor(list(indices), dtype=torch.long), cat["total"], cat["prior"], cat["decoder"],
                       term_sum, term_sq_sum, mse_sum,
                       (cat["terms"] if parts["terms"] else torch.zeros(0, T)) if keep_terms else None)


def _batch_terms(model: Model, diffusion: GaussianDiffusion, x0: Tensor, noise: Noise,
                 t_per_batch: int, clip_denoised: bool, decoder: Decoder, bar: tqdm, mse_sum: Tensor) -> Tensor:
    """(B, T) float64 terms of one batch; adds the batch's x̂₀ squared errors to ``mse_sum``."""
    terms = torch.zeros(x0.shape[0], diffusion.T, dtype=torch.float64)
    for ts, chunk_terms, chunk_mse in diffusion.bound_chunks(model, x0, noise, clip_denoised, t_per_batch,
                                                              decoder):
        idx = (ts - 1).cpu()
        terms[:, idx] = chunk_terms.double().cpu()
        mse_sum[idx] += chunk_mse.double().cpu().sum(0)
        bar.update(1)
    return terms


def merge_totals(parts: Sequence[BoundTotals]) -> BoundTotals:
    """One ``BoundTotals`` from the parts of several processes (in rank order)."""
    if not parts:
        raise ValueError("nothing to merge")
    keep = all(p.terms_bpd is not None for p in parts)
    return BoundTotals(
        torch.cat([p.indices for p in parts]),
        torch.cat([p.total_bpd for p in parts]),
        torch.cat([p.prior_bpd for p in parts]),
        torch.cat([p.decoder_bpd for p in parts]),
        torch.stack([p.term_sum for p in parts]).sum(0),
        torch.stack([p.term_sq_sum for p in parts]).sum(0),
        torch.stack([p.x0_mse_sum for p in parts]).sum(0),
        torch.cat([p.terms_bpd for p in parts]) if keep else None,  # type: ignore[misc]
    )


# --- the summary -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TermStat:
    """Mean of one term L_{t−1} over the images (t = 1 is the decoder term L_0)."""

    t: int
    term: str
    mean_bits_per_dim: float
    stderr_bits_per_dim: float
    x0_rmse_0_255: float
    original_t: int  # the step's time in the model's T-step chain (t itself unless the chain is respaced, --steps)


@dataclass(frozen=True)
class NLLResult:
    """Table 1's NLL of a split: the bound's mean ± standard error and its parts (Table 4's rate/distortion)."""

    nll_bits_per_dim: float          # mean over images of the full bound
    nll_stderr_bits_per_dim: float   # standard error of that mean
    prior_bits_per_dim: float        # mean L_T
    decoder_bits_per_dim: float      # mean L_0
    rate_bits_per_dim: float         # mean L_1 + ... + L_T (Sec. 4.3's "rate")
    distortion_bits_per_dim: float   # mean L_0 (Sec. 4.3's "distortion")
    n_images: int
    T: int
    split: str
    dataset: str
    decoder: str
    clip_denoised: bool
    t_per_batch: int
    seconds: float
    img_per_s: float
    terms: tuple[TermStat, ...] = field(default=(), repr=False)
    variance: str = "model"          # the reverse variance: the model's own, or Analytic-DPM's σ*² (Bao et al.)
    conditional: bool = False        # a class-conditional model's bound on −log p(x_0 | y), each image's own label
    steps: int | None = None         # the bound of the chain respaced to this many steps (--steps; T is then it)

    def summary(self) -> dict[str, object]:
        """Every field except the per-t table (what ``nll.json`` holds)."""
        return {k: v for k, v in self.__dict__.items() if k != "terms"}


def term_stats(totals: BoundTotals, timesteps: Tensor | None = None) -> tuple[TermStat, ...]:
    """The per-t table: mean and standard error of each L_{t−1}, and x̂₀'s RMSE on the [0, 255] scale; with the
    chain's ``timesteps`` (0-indexed steps of the original chain, ``Schedule.timesteps``) each row's original t."""
    n = totals.n
    mean = totals.term_sum / n
    var = (totals.term_sq_sum - n * mean**2) / (n - 1) if n > 1 else torch.full_like(mean, math.nan)
    stderr = (var.clamp(min=0) / n).sqrt()
    rmse = (totals.x0_mse_sum / n).sqrt() * 127.5
    original = list(range(1, totals.T + 1)) if timesteps is None else [int(k) + 1 for k in timesteps]
    return tuple(TermStat(t, f"L_{t - 1}", mean[t - 1].item(), stderr[t - 1].item(), rmse[t - 1].item(),
                          original[t - 1]) for t in range(1, totals.T + 1))


def summarize(totals: BoundTotals, split: str, dataset: str, decoder: str, clip_denoised: bool, t_per_batch: int,
              seconds: float, variance: str = "model", conditional: bool = False, steps: int | None = None,
              timesteps: Tensor | None = None) -> NLLResult:
    """The NLL summary of merged totals (of a chain respaced to ``steps``, whose ``timesteps`` they are)."""
    if totals.n == 0:
        raise ValueError("no images were evaluated")
    nll, stderr = mean_and_stderr(totals.total_bpd)
    decoder_mean = totals.decoder_bpd.mean().item()
    return NLLResult(
        nll_bits_per_dim=nll, nll_stderr_bits_per_dim=stderr, prior_bits_per_dim=totals.prior_bpd.mean().item(),
        decoder_bits_per_dim=decoder_mean, rate_bits_per_dim=nll - decoder_mean,
        distortion_bits_per_dim=decoder_mean, n_images=totals.n, T=totals.T, split=split, dataset=dataset,
        decoder=decoder, clip_denoised=clip_denoised, t_per_batch=t_per_batch, seconds=seconds,
        img_per_s=totals.n / seconds if seconds > 0 else math.nan, terms=term_stats(totals, timesteps),
        variance=variance, conditional=conditional, steps=steps,
    )


# --- the command -------------------------------------------------------------------------------

@dataclass(frozen=True)
class NLLOptions:
    """What ``ddpm nll`` evaluates, beyond the common options."""

    data: DataChoice = DataChoice(split="test")
    t_batch: int = 10                   # bound terms (times t) per network call
    clip_denoised: bool = True          # clip x̂₀ to [-1, 1] inside p_θ (as the official evaluation)
    decoder: DecoderChoice = "auto"     # L_0: Eq. 13 for images, Gaussian density for toy points
    save_terms: bool = False            # also write every term of every image (terms.npz, N × T)
    steps: int | None = None            # bound of the chain respaced to this many steps (None: all T)
    variance: VarianceChoice = "model"  # "analytic": Analytic-DPM's σ*² from the Γ stored beside the checkpoint
    n_images: int | None = None         # training images for a Γ estimate computed now (analytic only)
    recompute: bool = False             # replace a stored Γ estimate (analytic only)

    def __post_init__(self) -> None:
        check_int("--t-batch", self.t_batch, 1)
        if self.variance not in get_args(VarianceChoice):
            raise ConfigError(f"--variance must be model or analytic, got {shown(self.variance)}")
        if self.n_images is not None:
            check_int("--n-images", self.n_images, 1)
        if self.variance != "analytic" and (self.n_images is not None or self.recompute):
            raise ConfigError("--n-images and --recompute apply to --variance analytic only")
        if self.decoder not in get_args(DecoderChoice):
            raise ConfigError(f"--decoder must be auto, discretized or continuous, got {shown(self.decoder)}")
        if self.steps is not None:
            check_int("--steps", self.steps, 1)  # <= T once the model is loaded (run_nll)


def evaluate_bound(s: Session, common: CommonOptions, data: DataChoice, t_batch: int, clip_denoised: bool,
                   decoder: Decoder, keep_terms: bool, steps: int | None = None,
                   diffusion: GaussianDiffusion | None = None) -> tuple[BoundTotals | None, float]:
    """This process's share of the bound on the chosen split, merged on rank 0 (None elsewhere); and seconds.

    ``diffusion`` replaces the model's own (e.g. an AnalyticDiffusion); it is respaced to ``steps`` here. A
    class-conditional model is evaluated under each image's own label (the conditional bound).
    """
    tick = time.perf_counter()
    diffusion = (s.model.diffusion if diffusion is None else diffusion).with_steps(steps)  # the one respacing rule
    dataset = load_split(s.config, data)
    n = limited(len(dataset), common.limit)  # type: ignore[arg-type]
    mine = shard(range(n), s.group)
    labels = check_model_classes(s.model, dataset) if s.model.num_classes is not None else None
    part = bound_totals(s.model, diffusion, dataset, mine, common.seed, common.batch_size, t_batch,
                        clip_denoised, decoder, keep_terms, s.device, common.progress and s.progress_enabled, labels)
    parts = gather_to_main(part, s.group)
    return (merge_totals(parts) if parts is not None else None), time.perf_counter() - tick


def run_nll(common: CommonOptions, options: NLLOptions = NLLOptions()) -> NLLResult | None:
    """``ddpm nll``: the bound on a split, written to nll.json, terms.csv, per_image.csv, terms.png (rank 0)."""
    with session(common, "nll") as s:
        if options.steps is not None:  # needs the model's T: checked before any work or file
            check_int("--steps", options.steps, 1, s.model.diffusion.T)
        decoder = resolve_decoder(options.decoder, is_image_model(s.config))
        diffusion = None
        if options.variance == "analytic":
            # Γ on the training split (the stored estimate, or computed now and stored beside the checkpoint)
            from .analytic_variance import analytic_diffusion, analytic_gamma

            # read, or computed (each rank its share of the images) and stored by rank 0; every rank holds it
            train = load_split(s.config, replace(options.data, split="train"))
            gamma = analytic_gamma(common.checkpoint, s.model, train, options.n_images, common.seed,
                                   common.batch_size, options.recompute, group=s.group).cpu()
            diffusion = analytic_diffusion(s.model, gamma)
        totals, seconds = evaluate_bound(s, common, options.data, options.t_batch, options.clip_denoised, decoder,
                                         options.save_terms, options.steps, diffusion)
        if totals is None:
            return None
        dataset = options.data.dataset or s.config.data.dataset
        timesteps = s.model.diffusion.with_steps(options.steps).schedule.timesteps  # the chain evaluate_bound used
        result = summarize(totals, options.data.split, dataset, decoder, options.clip_denoised, options.t_batch,
                           seconds, options.variance, s.model.num_classes is not None, options.steps, timesteps)
        write_nll(s.out, result, totals)
        write_run_info(s, {"common": common, "nll": options})
        return result


def write_nll(out: Path, result: NLLResult, totals: BoundTotals) -> list[Path]:
    """nll.json (summary), terms.csv (mean of each term by t), per_image.csv, terms.png, terms.npz if kept."""
    paths = [write_json(out / "nll.json", result.summary()),
             write_csv(out / "terms.csv", [t.__dict__ for t in result.terms]),
             write_csv(out / "per_image.csv", [
                 {"index": int(i), "total_bits_per_dim": float(a), "prior_bits_per_dim": float(p),
                  "decoder_bits_per_dim": float(d), "rate_bits_per_dim": float(a - d)}
                 for i, a, p, d in zip(totals.indices, totals.total_bpd, totals.prior_bpd, totals.decoder_bpd)]),
             plot_bound_terms(out / "terms.png", [t.original_t for t in result.terms],
                              [t.mean_bits_per_dim for t in result.terms], result.prior_bits_per_dim)]
    if totals.terms_bpd is not None:
        write_npz(out / "terms.npz", compressed=True, terms_bits_per_dim=totals.terms_bpd.numpy(),
                  prior_bits_per_dim=totals.prior_bpd.numpy(), indices=totals.indices.numpy())
        paths.append(out / "terms.npz")
    return paths
