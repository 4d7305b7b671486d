"""``ddpm fid``: sample quality, as FID/IS (Table 1) against a dataset or statistics file, or for digits models
the offline digits metric (Fréchet distance of a small classifier's features and its classifier score).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import inspect_checkpoint
from ..config import ConfigError, RunConfig, check_int, check_seed, shown
from ..data.levels import from_levels
from ..images import save_image_grid
from ..outputs import OutputDir, check_output_dir, check_output_file
from ..processes import DEFAULT_DEVICE, check_device, device_for, local_rank
from .common import DataChoice, load_split, write_info_files, write_json
from .digits_metric import DigitsQuality, evaluate_digits
from .fid import FidResult, check_inception, compute_fid_is, compute_statistics, load_npz_images, save_statistics
from .figures import plot_class_histograms
from .parallel import evaluation_processes


def digits_quality(images: np.ndarray | torch.Tensor, seed: int = 0) -> DigitsQuality:
    """Digits Fréchet distance and classifier score of samples beside the real-vs-real baseline.

    ``images``: uint8 NHWC or NCHW on 0..255 (as ``ddpm sample`` writes them), or floats in [-1, 1] (N, 1, 8, 8).
    """
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images on 0..255, got {images.dtype}")
        if images.ndim == 4 and images.shape[-1] == 1 and images.shape[1] != 1:
            images = images.transpose(0, 3, 1, 2)
        images = from_levels(images, 256)
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
    device: str = DEFAULT_DEVICE
    limit: int | None = None                  # use the first N samples
    feature_extractor: Any = None             # an nn.Module (uint8 NCHW → features) instead of Inception
    overwrite: bool = False                   # write into an --out (or --save-stats) that holds other files

    def __post_init__(self) -> None:
        check_int("--is-splits", self.is_splits, 1)
        check_seed("--seed", self.seed)
        check_int("--batch-size", self.batch_size, 1)
        check_device(self.device)
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
    device = device_for(options.device, local_rank())
    with evaluation_processes(device) as group:
        if not group.is_main:
            return None  # the moments and logits accumulate in one process: it does all of it
        cfg = _checkpoint_config(options.checkpoint)
        digits = options.digits if options.digits is not None else (
            cfg is not None and (options.data.dataset or cfg.data.dataset) == "digits")
        if options.save_stats:
            check_output_file(options.save_stats, options.overwrite, "--save-stats")
        check_output_dir(options.out, "fid", options.overwrite)
        images = load_npz_images(options.samples, "--samples")[:options.limit]
        with OutputDir(options.out, "fid", overwrite=options.overwrite) as out:
            report = _digits_report(out, images, options) if digits else _fid_report(out, images, options, cfg, device)
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


def _fid_report(out: Path, images: np.ndarray, options: FidOptions, cfg: RunConfig | None,
                device: torch.device) -> FidReport:
    """FID/IS of uint8 NCHW samples against the statistics file or the configured dataset."""
    reference: Any
    if options.feature_extractor is None:  # a missing Inception is said before the reference data is read
        check_inception(options.inception_weights)
    if options.reference_stats is not None:
        reference = options.reference_stats
    elif cfg is not None:
        reference = load_split(cfg, options.data)
        if options.save_stats:
            stats = compute_statistics(reference, options.feature_extractor, options.inception_weights,
                                       batch_size=options.batch_size, device=device)
            save_statistics(options.save_stats, stats.mu, stats.sigma, stats.n)
            reference = options.save_stats
    else:
        raise ValueError("ddpm fid needs --ref-stats FILE or --checkpoint (whose dataset is the reference)")
    r = compute_fid_is(images, reference, options.feature_extractor, options.inception_weights,
                       batch_size=options.batch_size, is_splits=options.is_splits, seed=options.seed,
                       device=device)
    return FidReport("fid", fid=r, json=str(write_json(out / "fid.json", r.as_dict())))
