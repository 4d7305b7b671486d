"""Unconditional samples (Algorithm 2, respaced, or DDIM) streamed in batches into an .npz of uint8 images.

Sample i is drawn with its own generator, stream (seed, "sample", i) of ``ddpm.rng``, for x_T and for every
step's noise, so the images do not depend on the batch size or on how many processes share the work.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import inspect_checkpoint
from ..config import ConfigError, RunConfig, check_float, check_int, check_seed, shown
from ..diffusion import GaussianDiffusion, Model
from ..outputs import OutputDir, check_output_dir, check_output_file, safe_name, write_npz
from ..processes import check_device, device_for, local_rank
from ..rng import per_item
from ..sampling import SAMPLER_NAMES, SAMPLERS, SamplerName, sample
from ..schedules import SPACINGS, Spacing
from .common import (
    CommonOptions,
    DataChoice,
    batched,
    image_shape,
    is_image_model,
    load_split,
    session,
    write_info_files,
    write_json,
    write_run_info,
)
from .digits_metric import DigitsQuality, evaluate_digits
from .fid import FidResult, compute_fid_is, compute_statistics, load_npz_images, save_statistics
from .figures import plot_class_histograms, plot_points, save_image_grid, to_nhwc_uint8
from .parallel import evaluation_processes, gather_to_main, shard


@dataclass(frozen=True)
class SamplerSpec:
    """Which reverse process draws the samples."""

    sampler: SamplerName = "ancestral"   # a name of ddpm.sampling.SAMPLERS (Algorithm 2 by default)
    steps: int | None = None             # None: all T steps; fewer: respaced by ``spacing``
    eta: float = 0.0                     # DDIM's η (0: deterministic)
    clip_denoised: bool = True           # clip x̂₀ to [-1, 1] at every step
    spacing: Spacing = "uniform"         # which ``steps`` of the T (schedules.spaced_steps)

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"--sampler must be one of {', '.join(SAMPLER_NAMES)}, got {shown(self.sampler)}")
        if self.spacing not in SPACINGS:
            raise ConfigError(f"--spacing must be one of {', '.join(SPACINGS)}, got {shown(self.spacing)}")
        if self.steps is not None:
            check_int("--steps", self.steps, 1)  # <= T once the model is loaded (run_sample)
        check_float("--eta", self.eta, 0.0)  # NaN would pass `eta < 0` and poison every sample
        if self.eta and not SAMPLERS[self.sampler].takes_eta:
            raise ConfigError(f"--eta applies to ddim only, not to --sampler {self.sampler}")

    def n_steps(self, T: int) -> int:
        """Network calls per sample."""
        return T if self.steps is None else self.steps


def sample_batch(model: Model, diffusion: GaussianDiffusion, shape: tuple[int, ...], spec: SamplerSpec, seed: int,
                 first_index: int, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Samples first_index .. first_index + count − 1 (each seeded by its index), in [-1, 1]."""
    noise = per_item(seed, "sample", range(first_index, first_index + count))
    return sample(model, diffusion, (count, *shape), noise, spec.sampler, spec.steps, spec.eta, spec.clip_denoised,
                  device, spacing=spec.spacing)


def generate(model: Model, diffusion: GaussianDiffusion, shape: tuple[int, ...], spec: SamplerSpec, seed: int,
             indices: Sequence[int], batch_size: int = 64, device: torch.device | str = "cpu",
             progress: bool = False) -> np.ndarray:
    """Samples at consecutive ``indices``, streamed in batches: uint8 NHWC images, or float32 points (N, D)."""
    image = len(shape) == 3
    out: list[np.ndarray] = []
    bar = tqdm(total=len(indices), desc=f"{spec.sampler} ({spec.n_steps(diffusion.T)} steps)", unit="img",
               disable=not progress, leave=False)
    for idx in batched(indices, batch_size):
        x = sample_batch(model, diffusion, shape, spec, seed, int(idx[0]), len(idx), device)
        out.append(to_nhwc_uint8(x) if image else x.float().cpu().numpy())
        bar.update(len(idx))
    bar.close()
    if not out:
        return np.zeros((0, *shape[1:], shape[0]) if image else (0, *shape), np.uint8 if image else np.float32)
    return np.concatenate(out)


# --- the command -------------------------------------------------------------------------------

@dataclass(frozen=True)
class SampleOptions:
    """What ``ddpm sample`` draws, beyond the common options."""

    n: int = 64                          # number of samples
    spec: SamplerSpec = SamplerSpec()
    grid: int = 100                      # samples shown in samples.png
    name: str = "samples"                # file stem: samples.npz, samples.png, samples.json

    def __post_init__(self) -> None:
        check_int("--n", self.n, 1)
        check_int("--grid", self.grid, 1)  # the PNG shows min(grid, n) samples; an empty grid is no image


@dataclass(frozen=True)
class SampleResult:
    """Where the samples went and how fast they came."""

    npz: str
    png: str
    n: int
    sampler: str
    steps: int
    eta: float
    spacing: str
    seconds: float
    img_per_s: float
    world_size: int


def run_sample(common: CommonOptions, options: SampleOptions = SampleOptions()) -> SampleResult | None:
    """``ddpm sample``: <name>.npz (key ``images``, uint8 NHWC; ``points`` for toy models), a PNG, a JSON (rank 0)."""
    safe_name(options.name)  # before any work: the name must stay inside --out
    with session(common, "sample") as s:
        if options.spec.steps is not None:  # needs the model's T: checked before any sampling or file
            check_int("--steps", options.spec.steps, 1, s.model.diffusion.T)
        n = min(options.n, common.limit) if common.limit is not None else options.n
        shape = image_shape(s.config)
        mine = shard(range(n), s.group)
        diffusion = s.model.diffusion
        if SAMPLERS[options.spec.sampler].needs_gamma:
            # Analytic-DPM's samplers: σ*² from the Γ estimate stored beside the checkpoint (ddpm analytic-variance)
            from .analytic_variance import analytic_diffusion, read_estimate

            diffusion = analytic_diffusion(s.model, read_estimate(common.checkpoint, s.model)[0])
        tick = time.perf_counter()
        part = generate(s.model, diffusion, shape, options.spec, common.seed, mine, common.batch_size,
                        s.device, common.progress and s.progress_enabled)
        parts = gather_to_main(part, s.group)
        if parts is None:
            return None
        seconds = time.perf_counter() - tick
        result = write_samples(s.out, options, np.concatenate(parts), is_image_model(s.config), seconds,
                               s.model.diffusion.T, s.group.world_size)
        write_run_info(s, {"common": common, "sample": options})
        return result


def write_samples(out: Path, options: SampleOptions, samples: np.ndarray, image: bool, seconds: float, T: int,
                  world_size: int) -> SampleResult:
    """Write the .npz, the figure and the JSON summary of merged samples."""
    name = safe_name(options.name)
    npz, png = out / f"{name}.npz", out / f"{name}.png"
    write_npz(npz, **{"images" if image else "points": samples})
    if image:
        on_grid = samples[:options.grid]
        save_image_grid(png, on_grid, nrow=max(1, math.ceil(math.sqrt(len(on_grid)))))
    else:
        plot_points(png, samples, f"{len(samples)} samples")
    spec = options.spec
    result = SampleResult(str(npz), str(png), len(samples), spec.sampler, spec.n_steps(T), spec.eta, spec.spacing,
                          seconds,
                          len(samples) / seconds if seconds > 0 else math.nan, world_size)
    write_json(out / f"{name}.json", result)
    return result


# --- sample quality: FID/IS (Table 1) or, for digits, the offline digits metric ---------------------

def uint8_to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, C, H, W) on 0..255 as floats in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float() / 127.5 - 1.0


def digits_quality(images: np.ndarray | torch.Tensor, seed: int = 0) -> DigitsQuality:
    """Digits Fréchet distance and classifier score of samples beside the real-vs-real baseline.

    ``images``: uint8 NHWC or NCHW on 0..255 (as ``ddpm sample`` writes them), or floats in [-1, 1] (N, 1, 8, 8).
    """
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images on 0..255, got {images.dtype}")
        if images.ndim == 4 and images.shape[-1] == 1 and images.shape[1] != 1:
            images = images.transpose(0, 3, 1, 2)
        images = uint8_to_unit(images)
    return evaluate_digits(images, seed=seed)


@dataclass(frozen=True)
class FidOptions:
    """What ``ddpm fid`` measures."""

    samples: str                              # .npz of uint8 samples (key `images`), e.g. from `ddpm sample`
    out: str = "fid"                          # output folder
    checkpoint: str | None = None             # the model whose data section names the reference dataset
    reference_stats: str | None = None        # precomputed reference statistics (.npz with mu, sigma)
    data: DataChoice = DataChoice("train")    # the reference dataset (the paper: the training set)
    inception_weights: str | None = None      # local torch-fidelity Inception weights file (else it downloads)
    digits: bool | None = None                # digits metric instead of FID (None: when the dataset is digits)
    save_stats: str | None = None             # also save the reference statistics computed from the dataset
    is_splits: int = 10                       # Inception Score splits
    seed: int = 0
    batch_size: int = 50
    device: str = "cpu"
    limit: int | None = None                  # use the first N samples
    feature_extractor: Any = None             # an nn.Module (uint8 NCHW → features) instead of Inception
    overwrite: bool = False                   # write into an --out (or --save-stats) that holds other files

    def __post_init__(self) -> None:
        check_int("--is-splits", self.is_splits, 1)
        check_seed("--seed", self.seed)
        check_int("--batch-size", self.batch_size, 1)
        check_device(self.device, allow_auto=False)  # handed to torch as it is
        if self.limit is not None:  # images[:limit]: a negative limit would silently drop samples from the end
            check_int("--limit", self.limit, 1)
        if self.digits is not None and not isinstance(self.digits, bool):
            raise ConfigError(f"--digits must be true, false or None (by the dataset), got {shown(self.digits)}")


@dataclass(frozen=True)
class FidReport:
    """FID/IS of the samples, or the digits metric."""

    metric: str                               # "fid" or "digits"
    fid: FidResult | None = None
    digits: DigitsQuality | None = None
    json: str = ""


def run_fid(options: FidOptions) -> FidReport | None:
    """``ddpm fid``: FID (+ IS) against a dataset or statistics file, or the digits metric; rank 0 only."""
    with evaluation_processes(device_for(options.device, local_rank())) as group:
        if not group.is_main:
            return None  # the metrics accumulate inside torchmetrics: one process does all of it
        cfg = _checkpoint_config(options.checkpoint)
        digits = options.digits if options.digits is not None else (
            cfg is not None and (options.data.dataset or cfg.data.dataset) == "digits")
        if options.save_stats:
            check_output_file(options.save_stats, options.overwrite, "--save-stats")
        check_output_dir(options.out, "fid", options.overwrite)
        images = load_npz_images(options.samples)[:options.limit]
        with OutputDir(options.out, "fid", overwrite=options.overwrite) as out:
            report = _digits_report(out, images, options) if digits else _fid_report(out, images, options, cfg)
            save_image_grid(out / "samples_preview.png", images[:100].transpose(0, 2, 3, 1))
            write_info_files(out, "fid", options, cfg.to_dict() if cfg is not None else None,
                             world_size=group.world_size)
        return report


def _checkpoint_config(checkpoint: str | None) -> RunConfig | None:
    """The run config saved in a checkpoint (read from meta.json alone: no tensor is loaded)."""
    return None if checkpoint is None else RunConfig.from_dict(inspect_checkpoint(checkpoint).config)


def _digits_report(out: Path, images: np.ndarray, options: FidOptions) -> FidReport:
    """The digits metric of uint8 NCHW samples, with its JSON and the class histogram figure."""
    q = digits_quality(images, options.seed)
    plot_class_histograms(out / "digits_classes.png", q.class_histogram, q.class_histogram_real)
    return FidReport("digits", digits=q, json=str(write_json(out / "digits_quality.json", q.as_dict())))


def _fid_report(out: Path, images: np.ndarray, options: FidOptions, cfg: RunConfig | None) -> FidReport:
    """FID/IS of uint8 NCHW samples against the statistics file or the configured dataset."""
    reference: Any
    if options.reference_stats is not None:
        reference = options.reference_stats
    elif cfg is not None:
        reference = load_split(cfg, options.data)
        if options.save_stats:
            stats = compute_statistics(reference, options.feature_extractor, options.inception_weights,
                                       batch_size=options.batch_size, device=options.device)
            save_statistics(options.save_stats, stats.mu, stats.sigma, stats.n)
            reference = options.save_stats
    else:
        raise ValueError("ddpm fid needs --ref-stats FILE or --checkpoint (whose dataset is the reference)")
    r = compute_fid_is(images, reference, options.feature_extractor, options.inception_weights,
                       batch_size=options.batch_size, is_splits=options.is_splits, seed=options.seed,
                       device=options.device)
    return FidReport("fid", fid=r, json=str(write_json(out / "fid.json", r.as_dict())))
