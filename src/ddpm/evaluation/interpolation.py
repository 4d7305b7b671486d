"""Interpolation in x_t (Sec. 4.4, Figs. 8-9): two test images encoded with shared noise, mixed, decoded.

x_t = q(x_t|x₀), x'_t = q(x_t|x'₀) with the same ε; x̄_t = (1 − λ) x_t + λ x'_t for each λ of the grid; each x̄_t is
decoded by the reverse process from t (one noise stream shared across λ). λ = 0 and 1 are reconstructions.
The row of pair (a, b) at time t is seeded by (seed, a, b, t), so rows do not depend on how processes share them
nor on the other pairs and times asked for.
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
from ..rng import GlobalNoise, generator, numpy_rng
from ..sampling import interpolate
from .common import CommonOptions, DataChoice, is_image_model, limited, load_split, session, write_json, write_run_info
from .parallel import gather_to_main, shard

Tensor = torch.Tensor


def lambda_grid(k: int) -> list[float]:
    """k values of λ evenly spaced over [0, 1] (k ≥ 2)."""
    if k < 2:
        raise ValueError(f"--lambdas needs at least 2 values, got {k}")
    return [i / (k - 1) for i in range(k)]


def default_t(T: int) -> int:
    """Sec. 4.4's t = 500 for T = 1000; T/2 otherwise."""
    return 500 if T == 1000 else max(1, round(T / 2))


def choose_pairs(n_images: int, n_pairs: int, seed: int, indices: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """Pairs of image indices: consecutive ``indices`` (a, b, c, d → (a, b), (c, d)), or random distinct pairs."""
    if indices:
        if len(indices) % 2:
            raise ValueError(f"--indices needs an even number of image indices (pairs), got {list(indices)}")
        bad = [i for i in indices if not 0 <= i < n_images]
        if bad:
            raise ConfigError(f"--indices {shown(bad)} are outside the split (0..{n_images - 1})")
        return [(int(indices[i]), int(indices[i + 1])) for i in range(0, len(indices), 2)]
    if n_images < 2:
        raise ValueError(f"interpolation needs at least 2 images, the split has {n_images}")
    rng = numpy_rng(seed, "pairs")
    return [tuple(int(v) for v in rng.choice(n_images, 2, replace=False)) for _ in range(n_pairs)]  # type: ignore[misc]


@torch.no_grad()
def interpolation_row(model: Model, diffusion: GaussianDiffusion, x_a: Tensor, x_b: Tensor, t: int,
                      lambdas: Sequence[float], noise: GlobalNoise, clip_denoised: bool = True) -> Tensor:
    """One row: x₀ | decoded x̄_t for each λ | x'₀, shape (len(lambdas) + 2, *x_a.shape[1:])."""
    decoded = interpolate(model, diffusion, x_a, x_b, t, lambdas, noise, clip_denoised)
    return torch.cat([x_a, decoded, x_b]).cpu()


def interpolation_rows(model: Model, diffusion: GaussianDiffusion, pairs: Tensor, times: Sequence[int],
                       lambdas: Sequence[float], seed: int, rows: Sequence[int], clip_denoised: bool = True,
                       device: torch.device | str = "cpu", progress: bool = False,
                       pair_indices: Sequence[tuple[int, int]] | None = None) -> Tensor:
    """Rows ``rows`` of the grid (pair j, time k) → row j·len(times) + k; ``pairs`` is (P, 2, C, H, W).

    The row of pair j = (a, b) at time t is seeded by (seed, a, b, t) (``pair_indices[j]``; (j, j) without them):
    the same row whichever other pairs and times the grid shows.
    """
    keys = [(j, j) for j in range(pairs.shape[0])] if pair_indices is None else \
        [(int(a), int(b)) for a, b in pair_indices]
    if len(keys) != pairs.shape[0]:
        raise ValueError(f"{len(keys)} index pairs for {pairs.shape[0]} pairs of images")
    out = []
    for r in tqdm(rows, desc="interpolation rows", leave=False, disable=not progress):
        j, k = divmod(int(r), len(times))
        noise = GlobalNoise(generator(seed, "interpolation", *keys[j], int(times[k])))
        a, b = pairs[j, 0:1].to(device), pairs[j, 1:2].to(device)
        out.append(interpolation_row(model, diffusion, a, b, times[k], lambdas, noise, clip_denoised))
    return torch.stack(out) if out else torch.zeros(0, len(lambdas) + 2, *pairs.shape[2:])


# --- the command -------------------------------------------------------------------------------

@dataclass(frozen=True)
class InterpolateOptions:
    """What ``ddpm interpolate`` draws, beyond the common options."""

    t: tuple[int, ...] | None = None          # times of the mixing (default 500, or T/2); several give rows
    lambdas: int = 11                         # λ grid size over [0, 1]
    pairs: int = 2                            # random pairs when `indices` is not given
    indices: tuple[int, ...] | None = None    # explicit pairs of test-image indices (a, b, c, d, ...)
    data: DataChoice = DataChoice(split="test")
    clip_denoised: bool = True

    def __post_init__(self) -> None:
        # t <= T and indices within the split need the model and the data: run_interpolate checks them
        if self.t is not None:
            if not self.t:
                raise ConfigError("--t needs at least one time, got none")
            for t in self.t:
                check_int("--t", t, 1)
        check_int("--lambdas", self.lambdas, 2)  # λ = 0 and λ = 1 at least
        check_int("--pairs", self.pairs, 1)
        if self.indices is not None:
            if not self.indices or len(self.indices) % 2:
                raise ConfigError(f"--indices needs an even number of image indices (pairs), got {shown(self.indices)}")
            for i in self.indices:
                check_int("--indices", i, 0)


@dataclass(frozen=True)
class InterpolateResult:
    """What was drawn and where it went."""

    pairs: tuple[tuple[int, int], ...]
    t: tuple[int, ...]
    lambdas: tuple[float, ...]
    png: str
    npz: str


def run_interpolate(common: CommonOptions,
                    options: InterpolateOptions = InterpolateOptions()) -> InterpolateResult | None:
    """``ddpm interpolate``: interpolation.png, interpolation.npz, interpolation.json (rank 0)."""
    with session(common, "interpolate") as s:
        if not is_image_model(s.config):
            raise ValueError("ddpm interpolate needs an image model (a U-Net checkpoint)")
        T = s.model.diffusion.T
        times = list(options.t or (default_t(T),))
        if any(not 1 <= t <= T for t in times):
            raise ConfigError(f"--t must be in 1..{T}, got {shown(times)}")
        lambdas = lambda_grid(options.lambdas)
        dataset = load_split(s.config, options.data)
        pairs = choose_pairs(len(dataset), options.pairs, common.seed, options.indices)  # type: ignore[arg-type]
        pairs = pairs[:limited(len(pairs), common.limit)]
        images = torch.stack([torch.stack([dataset[a], dataset[b]]) for a, b in pairs])
        rows = shard(range(len(pairs) * len(times)), s.group)
        part = interpolation_rows(s.model, s.model.diffusion, images, times, lambdas, common.seed, rows,
                                  options.clip_denoised, s.device, common.progress and s.progress_enabled, pairs)
        parts = gather_to_main(part, s.group)
        if parts is None:
            return None
        result = write_interpolation(s.out, torch.cat(parts), pairs, times, lambdas)
        write_run_info(s, {"common": common, "interpolate": options})
        return result


def write_interpolation(out: Path, rows: Tensor, pairs: list[tuple[int, int]], times: list[int],
                        lambdas: list[float]) -> InterpolateResult:
    """The PNG (x₀ | λ grid | x'₀ per row) and the .npz (``images`` (R, L, H, W, C) decoded, ``sources``)."""
    R = rows.shape[0]
    grid = to_display_uint8(rows)
    npz = out / "interpolation.npz"
    write_npz(npz, images=grid[:, 1:-1], sources=grid[:, [0, -1]], lambdas=np.array(lambdas),
             t=np.array([times[r % len(times)] for r in range(R)]),
             pairs=np.array([pairs[r // len(times)] for r in range(R)]))
    png = save_image_grid(out / "interpolation.png", grid)
    result = InterpolateResult(tuple(pairs), tuple(times), tuple(lambdas), str(png), str(npz))
    write_json(out / "interpolation.json", result)
    return result
