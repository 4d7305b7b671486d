"""Plots of the evaluation commands (matplotlib, Agg backend); image grids and strips are ``ddpm.images``."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..outputs import atomic_file  # noqa: E402
from .report import COLUMN_PX  # noqa: E402

DPI = 110  # PNG pixels per inch: 10 pt text is about 15 px high


def _column_figsize(height_px: int) -> tuple[float, float]:
    """A figure size (inches) whose PNG is exactly the report's column wide and ``height_px`` high."""
    return COLUMN_PX / DPI, height_px / DPI


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=DPI)
    finally:
        plt.close(fig)
    return path


def plot_bound_terms(path: str | Path, t: Sequence[int], term_bits_per_dim: Sequence[float],
                     prior_bits_per_dim: float) -> Path:
    """The bound's terms L_{t−1} against t (log scale), L_T as a reference line, and their running total."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    terms = np.asarray(term_bits_per_dim, dtype=float)
    axes[0].plot(t, np.clip(terms, 1e-12, None), lw=1.2, label="$L_{t-1}$")
    if prior_bits_per_dim > 0:
        axes[0].axhline(prior_bits_per_dim, color="grey", ls="--", lw=1, label="$L_T$ (prior)")
    axes[0].set(xlabel="t", ylabel="bits/dim", yscale="log", title="terms of the bound (Eq. 5)")
    axes[0].legend(fontsize=8)
    cumulative = prior_bits_per_dim + np.cumsum(terms[::-1])[::-1]  # L_T + Σ_{s ≥ t} L_{s−1}
    axes[1].plot(t, cumulative, lw=1.2)
    axes[1].set(xlabel="t", ylabel="bits/dim", title="$L_T + \\sum_{s \\geq t} L_{s-1}$")
    for ax in axes:
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_rate_distortion(path: str | Path, t: Sequence[int], rate_bits_per_dim: Sequence[float],
                         rmse_0_255: Sequence[float], T: int) -> Path:
    """Fig. 5's three panels, the report's column wide: (a) distortion and (b) rate against reverse-process steps
    T − t, (c) distortion against rate."""
    steps = [T - v for v in t]
    fig, axes = plt.subplots(1, 3, figsize=_column_figsize(440))
    axes[0].plot(steps, rmse_0_255, marker=".", ms=3)
    axes[0].set(xlabel="reverse process steps (T − t)", ylabel="distortion (RMSE [0, 255])",
                title="(a) distortion against steps")
    axes[1].plot(steps, rate_bits_per_dim, marker=".", ms=3)
    axes[1].set(xlabel="reverse process steps (T − t)", ylabel="rate (bits/dim)", title="(b) rate against steps")
    axes[2].plot(rate_bits_per_dim, rmse_0_255, marker=".", ms=3)
    axes[2].set(xlabel="rate (bits/dim)", ylabel="distortion (RMSE [0, 255])", title="(c) distortion against rate")
    for ax in axes:
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_points(path: str | Path, points: np.ndarray, title: str = "samples") -> Path:
    """A scatter plot of 2-D points (samples of the toy model)."""
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(points[:, 0], points[:, 1], s=3, alpha=0.5)
    ax.set(title=title, aspect="equal")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_class_histograms(path: str | Path, samples: Sequence[int], real: Sequence[int]) -> Path:
    """Predicted-digit histograms of the samples next to those of real images."""
    fig, ax = plt.subplots(figsize=(6, 3))
    k = np.arange(len(samples))
    ax.bar(k - 0.2, samples, width=0.4, label="samples")
    ax.bar(k + 0.2, real, width=0.4, label="real")
    ax.set(xlabel="predicted digit", ylabel="images", xticks=k)
    ax.legend(fontsize=8)
    return _save(fig, path)


def read_log(path: str | Path) -> list[dict[str, float]]:
    """The trainer's log.csv as rows of floats."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_loss_curve(path: str | Path, log_csv: str | Path) -> Path:
    """Training loss against step, overall and by quartile of t, the report's column wide."""
    rows = read_log(log_csv)
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=_column_figsize(400))
    marker = "o" if len(rows) < 10 else None  # a short log's few points stay visible
    ax.plot(steps, [r["loss"] for r in rows], color="black", lw=2, marker=marker, label="all t")
    for q in range(1, 5):
        ax.plot(steps, [r[f"loss_t_q{q}"] for r in rows], lw=1, marker=marker, label=f"t in quartile {q}")
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="loss")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)  # beside the curves, never on them
    ax.grid(alpha=0.3)
    return _save(fig, path)


@dataclass(frozen=True)
class SamplerRun:
    """One sampler's samples scored: its name, network evaluations per sample and Fréchet distance."""

    sampler: str
    steps: int
    fd: float
    spacing: str = "uniform"


def plot_sampler_comparison(path: str | Path, runs: Sequence[SamplerRun], reference: SamplerRun | None,
                            real_mean: float, real_sd: float) -> Path:
    """Fréchet distance against network evaluations, a line per sampler and spacing; ``reference`` (e.g. Algorithm 2
    on all T steps) as a level, and sets of real images as a band (mean ± sd of their FDs: how much one set's FD
    varies)."""
    fig, ax = plt.subplots(figsize=_column_figsize(520))
    if reference is not None:
        ax.axhline(reference.fd, color="black", linestyle="--",
                   label=f"{reference.sampler}, {reference.steps} steps ({reference.fd:.2f})")
    for name, spacing in dict.fromkeys((r.sampler, r.spacing) for r in runs):  # a sampler on two spacings: two lines
        mine = sorted((r for r in runs if (r.sampler, r.spacing) == (name, spacing)), key=lambda r: r.steps)
        ax.plot([r.steps for r in mine], [r.fd for r in mine], marker="o", label=f"{name} ({spacing})")
    ax.axhspan(real_mean - real_sd, real_mean + real_sd, color="grey", alpha=0.2, lw=0,
               label=f"sets of real digits ({real_mean:.2f} ± {real_sd:.2f})")
    ax.axhline(real_mean, color="grey", linestyle=":")
    ax.set_xscale("log")
    steps = sorted({r.steps for r in runs})
    ax.set_xticks(steps, [str(k) for k in steps])  # the measured step counts, not 2×10¹
    ax.minorticks_off()
    ax.set_xlabel("network evaluations per sample")
    ax.set_ylabel("digits Fréchet distance (lower is better)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
