"""Progressive generation (Fig. 6) and samples that share one frozen x_t (Fig. 7).

Fig. 6: x̂₀ predicted at chosen steps of one reverse process, one row per sample. Fig. 7: for a test image x₀
and several t, one x_t ~ q(x_t|x₀) is frozen and several x₀ ~ p_θ(x₀|x_t) are drawn from it; each row is
x₀ | x_t | samples. Fig. 6's row i is seeded by (seed, i), Fig. 7's row of test image i at time t by (seed, i, t),
so rows do not depend on how processes share them nor on the other rows asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import ConfigError, check_int, shown
from ..diffusion import GaussianDiffusion, Model
from ..images import save_image_grid, to_display_uint8
from ..outputs import write_npz
from ..rng import GlobalNoise, Noise, PerItemNoise, generator, per_item
from ..sampling import ancestral_steps, reconstruct_from
from ..schedules import spaced_steps
from .common import (
    CommonOptions,
    DataChoice,
    Session,
    is_image_model,
    limited,
    load_split,
    session,
    write_json,
    write_run_info,
)
from .parallel import gather_to_main, shard

Tensor = torch.Tensor


def evenly_spaced_times(T: int, k: int) -> list[int]:
    """k times from T down to 1, evenly spaced (Fig. 6's columns): the respacing rule, newest first."""
    return sorted(spaced_steps(T, k), reverse=True)  # the one rounding rule (schedules.spaced_steps)


def quarter_times(T: int) -> list[int]:
    """Fig. 7's times: T, 3T/4, T/2, T/4 (1000, 750, 500, 250 for T = 1000)."""
    return sorted({max(1, round(T * k / 4)) for k in (4, 3, 2, 1)}, reverse=True)


def check_times(times: Sequence[int], T: int, option: str = "times") -> list[int]:
    """``times`` sorted from large to small, each in 1..T."""
    bad = [t for t in times if not 1 <= t <= T]
    if bad or not times:
        raise ConfigError(f"{option} must be in 1..{T} (and at least one), got {shown(list(times))}")
    return sorted(set(times), reverse=True)


@torch.no_grad()
def progressive_x0(model: Model, diffusion: GaussianDiffusion, shape: tuple[int, ...], at: Sequence[int],
                   seed: int, indices: Sequence[int], clip_denoised: bool = True,
                   device: torch.device | str = "cpu", progress: bool = False) -> Tensor:
    """Fig. 6: x̂₀ at the steps ``at`` of Algorithm 2 for the samples ``indices``: (R, len(at), *shape)."""
    at = check_times(at, diffusion.T)
    if not len(indices):
        return torch.zeros(0, len(at), *shape)
    noise = per_item(seed, "progressive", indices)  # row i is the same in any batch or shard
    x_T = noise.randn((len(indices), *shape), device)
    want = set(at)
    steps = tqdm(ancestral_steps(model, diffusion, x_T, noise, clip_denoised), total=diffusion.T, leave=False,
                 desc="Fig. 6 (reverse process)", disable=not progress)
    frames = [s.pred_x0 for s in steps if s.t in want]
    return torch.stack(frames, dim=1).cpu()


@torch.no_grad()
def shared_xt_row(model: Model, diffusion: GaussianDiffusion, x0: Tensor, t: int, n: int, noise: GlobalNoise,
                  clip_denoised: bool = True, sample_noise: Noise | None = None) -> Tensor:
    """Fig. 7, one row: x₀, the frozen x_t, then n samples of p_θ(x₀|x_t): (n + 2, *x0.shape[1:])."""
    x_t, samples = reconstruct_from(model, diffusion, x0, t, n, noise, clip_denoised, sample_noise)
    return torch.cat([x0, x_t, samples]).cpu()


def shared_xt_rows(model: Model, diffusion: GaussianDiffusion, images: Tensor, times: Sequence[int], n: int,
                   seed: int, rows: Sequence[int], clip_denoised: bool = True,
                   device: torch.device | str = "cpu", progress: bool = False,
                   image_indices: Sequence[int] | None = None) -> Tensor:
    """Rows ``rows`` of the grid (image j, time k) → row j·len(times) + k.

    The row of image j at time t is seeded by (seed, i, t), i its index in the split (``image_indices[j]``; j
    without them), and its sample m by (seed, i, t, m): the same row whichever other images and times the figure
    shows, and the same first samples however many it draws.
    """
    keys = list(range(images.shape[0])) if image_indices is None else [int(i) for i in image_indices]
    if len(keys) != images.shape[0]:
        raise ValueError(f"{len(keys)} image indices for {images.shape[0]} images")
    out = []
    for r in tqdm(rows, desc="Fig. 7 (shared x_t)", leave=False, disable=not progress):
        j, k = divmod(int(r), len(times))
        key = (seed, "reconstruction", keys[j], int(times[k]))
        # x_t from stream (…, i, t), its sample m from (…, i, t, m): the same however many samples the row shows
        samples = PerItemNoise(tuple(generator(*key, m) for m in range(n)))
        out.append(shared_xt_row(model, diffusion, images[j:j + 1].to(device), times[k], n,
                                 GlobalNoise(generator(*key)), clip_denoised, samples))
    return torch.stack(out) if out else torch.zeros(0, n + 2, *images.shape[1:])


# --- the command -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProgressiveOptions:
    """What ``ddpm progressive`` draws, beyond the common options."""

    rows: int = 8                            # Fig. 6: samples (rows)
    at: tuple[int, ...] | None = None        # Fig. 6: steps shown (default: `columns` evenly spaced)
    columns: int = 10                        # Fig. 6: number of steps when `at` is not given
    share_t: tuple[int, ...] | None = None   # Fig. 7: times of the frozen x_t (default T, 3T/4, T/2, T/4)
    share_samples: int = 3                   # Fig. 7: samples per frozen x_t
    images: tuple[int, ...] | None = None    # Fig. 7: test-image indices (default: the first `share_images`)
    share_images: int = 2                    # Fig. 7: number of test images when `images` is not given
    data: DataChoice = DataChoice(split="test")
    clip_denoised: bool = True

    def __post_init__(self) -> None:
        for option, value in (("--rows", self.rows), ("--columns", self.columns),
                              ("--share-samples", self.share_samples), ("--share-images", self.share_images)):
            check_int(option, value, 1)
        # times <= T and indices within the split need the model and the data: run_progressive checks them
        for option, values, lo in (("--at", self.at, 1), ("--share-t", self.share_t, 1), ("--images", self.images, 0)):
            if values is not None:
                if not values:  # an empty list would quietly mean "the default"
                    raise ConfigError(f"{option} needs at least one value, got none")
                for v in values:
                    check_int(option, v, lo)


@dataclass(frozen=True)
class ProgressiveResult:
    """What was drawn and where it went."""

    at: tuple[int, ...]
    share_t: tuple[int, ...]
    image_indices: tuple[int, ...]
    progressive_png: str
    progressive_npz: str
    shared_png: str
    shared_npz: str


def run_progressive(common: CommonOptions,
                    options: ProgressiveOptions = ProgressiveOptions()) -> ProgressiveResult | None:
    """``ddpm progressive``: progressive.png/.npz (Fig. 6) and shared_xt.png/.npz (Fig. 7) (rank 0)."""
    with session(common, "progressive") as s:
        if not is_image_model(s.config):
            raise ValueError("ddpm progressive needs an image model (a U-Net checkpoint)")
        T = s.model.diffusion.T
        at = check_times(options.at or evenly_spaced_times(T, min(options.columns, T)), T, "--at")
        share_t = check_times(options.share_t or quarter_times(T), T, "--share-t")
        images, indices = _test_images(s, common, options)  # bad --images fail before any sampling
        fig6 = _fig6(s, common, options, at)
        fig7 = _fig7(s, common, options, images, share_t, indices)
        if fig6 is None or fig7 is None:
            return None
        result = write_progressive(s.out, fig6, fig7, at, share_t, indices)
        write_run_info(s, {"common": common, "progressive": options})
        return result


def _fig6(s: Session, common: CommonOptions, options: ProgressiveOptions, at: list[int]) -> Tensor | None:
    """This rank's Fig. 6 rows, merged on rank 0."""
    rows = shard(range(limited(options.rows, common.limit)), s.group)
    part = progressive_x0(s.model, s.model.diffusion, s.model.sample_shape, at, common.seed, rows,
                          options.clip_denoised, s.device, common.progress and s.progress_enabled)
    parts = gather_to_main(part, s.group)
    return torch.cat(parts) if parts is not None else None


def _test_images(s: Session, common: CommonOptions, options: ProgressiveOptions) -> tuple[Tensor, list[int]]:
    """The chosen test images (B, C, H, W) and their indices."""
    dataset = load_split(s.config, options.data)
    n = len(dataset)  # type: ignore[arg-type]
    indices = list(options.images) if options.images else list(range(min(options.share_images, n)))
    indices = indices[:limited(len(indices), common.limit)]
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise ConfigError(f"--images {shown(bad)} are outside the {options.data.split} split (0..{n - 1})")
    return torch.stack([dataset[i] for i in indices]), indices


def _fig7(s: Session, common: CommonOptions, options: ProgressiveOptions, images: Tensor,
          share_t: list[int], indices: list[int]) -> Tensor | None:
    """This rank's Fig. 7 rows, merged on rank 0."""
    rows = shard(range(images.shape[0] * len(share_t)), s.group)
    part = shared_xt_rows(s.model, s.model.diffusion, images, share_t, options.share_samples, common.seed, rows,
                          options.clip_denoised, s.device, common.progress and s.progress_enabled, indices)
    parts = gather_to_main(part, s.group)
    return torch.cat(parts) if parts is not None else None


def write_progressive(out: Path, fig6: Tensor, fig7: Tensor, at: list[int], share_t: list[int],
                      indices: list[int]) -> ProgressiveResult:
    """The two figures as PNG and uint8 .npz, and progressive.json."""
    strip, grid = to_display_uint8(fig6), to_display_uint8(fig7)  # x_t is clipped for display
    write_npz(out / "progressive.npz", pred_x0=strip, at=np.array(at))
    write_npz(out / "shared_xt.npz", images=grid, t=np.array(share_t), image_indices=np.array(indices),
             columns=np.array(["x0", "x_t"] + [f"sample_{i}" for i in range(grid.shape[1] - 2)]))
    result = ProgressiveResult(tuple(at), tuple(share_t), tuple(indices),
                               str(save_image_grid(out / "progressive.png", strip)), str(out / "progressive.npz"),
                               str(save_image_grid(out / "shared_xt.png", grid)), str(out / "shared_xt.npz"))
    write_json(out / "progressive.json", result)
    return result
