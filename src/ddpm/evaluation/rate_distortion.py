"""Rate–distortion of the reverse process as a progressive code (Sec. 4.3, Fig. 5, Table 4).

At each t, once x_t is known: rate(t) = L_T + Σ_{s>t} L_{s−1} = L_T + L_{T−1} + … + L_t bits/dim received so far
(Algorithm 3 has sent x_T, x_{T−1}, …, x_t), and distortion(t) = RMSE on the [0, 255] scale between x₀ and
x̂₀ = (x_t − √(1 − ᾱ_t) ε_θ(x_t, t))/√ᾱ_t (Eq. 15), with x_t ~ q(x_t|x₀). Both come from one pass of the bound:
rate(1) = bound − L_0 and rate(T) = L_T.

The rate at any t needs every KL term above it, so the network runs at every t; ``num_t`` only chooses the
rows reported (always including the paper's Table 4 points).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import check_int
from ..diffusion import Decoder, GaussianDiffusion, Model
from ..schedules import spaced_steps
from .common import CommonOptions, DataChoice, is_image_model, session, write_csv, write_json, write_run_info
from .figures import plot_rate_distortion
from .nll import BoundTotals, ImageSource, bound_totals, evaluate_bound, resolve_decoder

Tensor = torch.Tensor


@dataclass(frozen=True)
class RatePoint:
    """One point of Fig. 5 / one row of Table 4."""

    t: int
    reverse_steps: int           # T − t, the x-axis of Fig. 5 (Table 4 lists T − t + 1)
    rate_bits_per_dim: float     # L_T + Σ_{s ≥ t} L_s (bits received once x_t is known)
    rmse_0_255: float            # RMSE(x₀, x̂₀(x_t)) on the [0, 255] scale
    paper_point: bool            # one of Table 4's rows


@dataclass(frozen=True)
class RateDistortionResult:
    """The curve, the bound it came from, and how it was measured."""

    points: tuple[RatePoint, ...]
    nll_bits_per_dim: float      # mean full bound of the same images (rate(1) + L_0)
    decoder_bits_per_dim: float  # mean L_0
    n_images: int
    T: int
    split: str
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> dict[str, object]:
        """Every field except the points (what rate_distortion.json holds, beside the table of paper points)."""
        return {**{k: v for k, v in self.__dict__.items() if k != "points"},
                "paper_points": [p.__dict__ for p in self.points if p.paper_point]}


def paper_times(T: int) -> list[int]:
    """Table 4's rows, T − t + 1 = T, 0.9 T, …, 0.1 T (t = 1, 101, …, 901 for T = 1000)."""
    return sorted({T + 1 - max(1, round(k * T / 10)) for k in range(1, 11)})


def select_times(T: int, num_t: int | None = None) -> list[int]:
    """Every t in 1..T, or ``num_t`` evenly spaced ones (including 1 and T) plus the paper's points."""
    if num_t is None or num_t >= T:
        return list(range(1, T + 1))
    if num_t < 2:
        raise ValueError(f"num_t must be >= 2, got {num_t}")
    return sorted(set(spaced_steps(T, num_t)) | set(paper_times(T)))  # the one rule for evenly spaced steps


def rate_distortion_curve(totals: BoundTotals, times: Sequence[int] | None = None) -> tuple[RatePoint, ...]:
    """Fig. 5 from merged bound totals, at ``times`` (default every t)."""
    n, T = totals.n, totals.T
    if n == 0:
        raise ValueError("no images were evaluated")
    mean_terms = totals.term_sum / n                                   # index c holds L_c
    tail = torch.flip(torch.cumsum(torch.flip(mean_terms, [0]), 0), [0])  # tail[c] = Σ_{c' ≥ c} L_{c'}
    prior = totals.prior_bpd.double().mean().item()
    rmse = (totals.x0_mse_sum / n).sqrt() * 127.5
    paper = set(paper_times(T))
    points = []
    for t in times or range(1, T + 1):
        if not 1 <= t <= T:
            raise ValueError(f"t must be in 1..{T}, got {t}")
        rate = prior + (tail[t].item() if t < T else 0.0)
        points.append(RatePoint(t, T - t, rate, rmse[t - 1].item(), t in paper))
    return tuple(points)


def rate_distortion(model: Model, diffusion: GaussianDiffusion, images: ImageSource, indices: Sequence[int],
                    times: Sequence[int] | None = None, seed: int = 0, batch_size: int = 64, t_per_batch: int = 1,
                    clip_denoised: bool = True, device: torch.device | str = "cpu",
                    progress: bool = False, decoder: Decoder = "discretized") -> RateDistortionResult:
    """Fig. 5 for ``images[i]``, i in ``indices``, in one process (the command shares the work over processes).

    ``decoder`` is L_0's: Eq. 13 for images; ``"continuous"`` (the command's choice for toy points) the density.
    """
    totals = bound_totals(model, diffusion, images, indices, seed, batch_size, t_per_batch, clip_denoised,
                          decoder, device=device, progress=progress)
    return _result(totals, times, "given")


def _result(totals: BoundTotals, times: Sequence[int] | None, split: str, seconds: float = 0.0,
            notes: tuple[str, ...] = ()) -> RateDistortionResult:
    """The result of merged totals."""
    total = totals.total_bpd.double().mean().item()
    return RateDistortionResult(rate_distortion_curve(totals, times), total, totals.decoder_bpd.mean().item(),
                                totals.n, totals.T, split, seconds, notes)


# --- the command -------------------------------------------------------------------------------

@dataclass(frozen=True)
class RateDistortionOptions:
    """What ``ddpm rate-distortion`` evaluates, beyond the common options."""

    data: DataChoice = DataChoice(split="test")
    num_t: int | None = None       # rows reported (None: every t); the network still runs at every t
    t_batch: int = 10              # bound terms (times t) per network call
    clip_denoised: bool = True     # clip x̂₀ to [-1, 1] (as the official evaluation)

    def __post_init__(self) -> None:
        if self.num_t is not None:  # select_times needs both ends, t = 1 and t = T
            check_int("--num-t", self.num_t, 2)
        check_int("--t-batch", self.t_batch, 1)


def run_rate_distortion(common: CommonOptions,
                        options: RateDistortionOptions = RateDistortionOptions()) -> RateDistortionResult | None:
    """``ddpm rate-distortion``: rate_distortion.csv/.json and the three-panel figure (rank 0)."""
    with session(common, "rate-distortion") as s:
        decoder = resolve_decoder("auto", is_image_model(s.config))
        totals, seconds = evaluate_bound(s, common, options.data, options.t_batch, options.clip_denoised, decoder,
                                         False)
        if totals is None:
            return None
        notes = ("rate(t) = L_T + L_{T-1} + ... + L_t; distortion = RMSE of x̂₀(x_t) on [0, 255], x_t ~ q(x_t|x_0)",)
        result = _result(totals, select_times(totals.T, options.num_t), options.data.split, seconds, notes)
        write_rate_distortion(s.out, result)
        write_run_info(s, {"common": common, "rate_distortion": options})
        return result


def write_rate_distortion(out: Path, result: RateDistortionResult) -> list[Path]:
    """rate_distortion.csv (every reported t), rate_distortion.json (summary + Table 4 rows), the figure."""
    pts = result.points
    return [write_csv(out / "rate_distortion.csv", [p.__dict__ for p in pts]),
            write_json(out / "rate_distortion.json", result.summary()),
            plot_rate_distortion(out / "rate_distortion.png", [p.t for p in pts],
                                 [p.rate_bits_per_dim for p in pts], [p.rmse_0_255 for p in pts], result.T)]
