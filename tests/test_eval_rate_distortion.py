"""Rate–distortion (Fig. 5, Table 4): closed forms for a hand-made model, the paper's points, the command's files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from _eval_tiny import make_checkpoint, one_thread, png_size, read_csv  # noqa: F401 (autouse fixture)
from ddpm.cli import main
from ddpm.config import DataConfig, DiffusionConfig
from ddpm.data import build_dataset
from ddpm.diffusion import GaussianDiffusion
from ddpm.evaluation.rate_distortion import paper_times, rate_distortion, select_times


def zero_eps(x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """A 'network' that always predicts ε̂ = 0, so x̂₀ = x_t/√ᾱ_t and x̂₀ − x₀ = √((1 − ᾱ_t)/ᾱ_t) ε."""
    return torch.zeros_like(x)


def test_paper_points():
    assert paper_times(1000) == [1, 101, 201, 301, 401, 501, 601, 701, 801, 901]
    assert paper_times(20) == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]
    ts = select_times(1000, 5)
    assert set(paper_times(1000)) <= set(ts) and {1, 1000} <= set(ts) and ts == sorted(ts)
    assert select_times(20) == list(range(1, 21))
    # the evenly spaced ones by the respacing rule (schedules.spaced_steps), the paper's points beside them
    assert select_times(1000, 5) == sorted({1, 250, 500, 750, 1000} | set(paper_times(1000)))


def test_rate_and_distortion_of_a_hand_made_model():
    """ε̂ = 0: distortion² = (1 − ᾱ_t)/ᾱ_t on [-1, 1], and L_{t−1} = c_t²(1 − ᾱ_t)/ᾱ_t/(2β_t) + ½(r − 1 − log r).

    c_t is x₀'s weight in μ̃_t (Eq. 7) and r = β̃_t/β_t (σ_t² = β_t against the posterior's β̃_t).
    """
    diffusion = GaussianDiffusion.from_config(DiffusionConfig(T=20, beta_end=0.2, levels=17))
    data = build_dataset(DataConfig(), (1, 8, 8), "test", 17)
    n = 60
    r = rate_distortion(zero_eps, diffusion, data, range(n), seed=0, batch_size=30, t_per_batch=20,
                        clip_denoised=False)
    s = diffusion.schedule
    ab, beta, bt, c0 = s.alpha_bar, s.betas, s.beta_tilde, s.posterior_coef_x0
    points = {p.t: p for p in r.points}
    assert sorted(points) == list(range(1, 21)) and r.n_images == n
    for t in range(1, 21):
        expected = 127.5 * math.sqrt((1 - ab[t - 1]) / ab[t - 1])
        assert points[t].rmse_0_255 == pytest.approx(expected, rel=0.08)  # 60 images × 64 pixels
    kl_bits = [(c0[t - 1] ** 2 * (1 - ab[t - 1]) / ab[t - 1] / (2 * beta[t - 1])
                + 0.5 * (bt[t - 1] / beta[t - 1] - 1 - math.log(bt[t - 1] / beta[t - 1]))).item() / math.log(2)
               for t in range(2, 21)]  # L_1 .. L_19
    rates = [points[t].rate_bits_per_dim for t in range(1, 21)]
    prior = points[20].rate_bits_per_dim  # rate(T) = L_T alone
    for t in range(1, 20):
        assert rates[t - 1] - prior == pytest.approx(sum(kl_bits[t - 1:]), rel=0.08)
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # bits accumulate as t goes down
    assert rates[0] == pytest.approx(r.nll_bits_per_dim - r.decoder_bits_per_dim, rel=1e-9)  # rate(1) = bound − L_0
    assert [p.reverse_steps for p in r.points] == [20 - t for t in range(1, 21)]


def test_command_files_and_paper_rows(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "rd"
    assert main(["rate-distortion", "--checkpoint", str(ckpt), "--out", str(out), "--limit", "6", "--num-t", "4",
                 "--batch-size", "6", "--t-batch", "20", "--no-progress"]) == 0
    rows = read_csv(out / "rate_distortion.csv")
    ts = [int(r["t"]) for r in rows]
    assert ts == select_times(20, 4) and set(paper_times(20)) <= set(ts)
    s = json.loads((out / "rate_distortion.json").read_text())
    assert s["n_images"] == 6 and [p["t"] for p in s["paper_points"]] == paper_times(20)
    first = next(r for r in rows if r["t"] == "1")
    assert float(first["rate_bits_per_dim"]) == pytest.approx(s["nll_bits_per_dim"] - s["decoder_bits_per_dim"])
    rmse = {int(r["t"]): float(r["rmse_0_255"]) for r in rows}
    assert rmse[1] < rmse[20]
    width, height = png_size(out / "rate_distortion.png")
    assert width > 2 * height  # three panels side by side
    assert (out / "args.json").exists() and (out / "config.json").exists()
