"""DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095) in data-prediction form on the discrete chain.

The probability-flow ODE in λ_t = log(α_t/σ_t), with α_t = √ᾱ_t and σ_t = √(1 − ᾱ_t), is solved exactly
in its linear part; the integral of x̂₀ over λ is approximated by the last 1, 2 or 3 predictions
(multistep). Each step goes from paper time t to t − 1 of ``diffusion`` (respace it first for fewer steps);
the step from t = 1 lands on ᾱ_0 = 1 (σ = 0, λ = +∞) and returns x̂₀ — diffusers' final_sigmas_type="zero".
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import torch

from ..diffusion import GaussianDiffusion, Model
from ..rng import GLOBAL_NOISE, Noise
from ..schedules import Schedule
from .steps import SampleStep, start_time, time_batch

Tensor = torch.Tensor

ThirdOrder = Literal["reference", "taylor"]
LOWER_ORDER_BELOW = 15  # chains shorter than this take order ≤ 2 on their second-to-last step (as diffusers)


def _alpha_sigma_lambda(s: Schedule, t: int) -> tuple[float, float, float]:
    """α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t) and λ_t = log α_t − log σ_t at paper time t ≥ 1, in float64."""
    alpha, sigma = float(s.sqrt_alpha_bar[t - 1]), float(s.sqrt_one_minus_alpha_bar[t - 1])
    return alpha, sigma, math.log(alpha) - math.log(sigma)


def _data_integral(h: float, lams: list[float], x0s: list[Tensor], sde: bool,
                   third_order: ThirdOrder = "reference") -> tuple[float, Tensor]:
    """(the weight of x̂₀ in the update, the multistep estimate it multiplies), orders 1-3.

    ``lams``/``x0s`` hold the newest prediction last. 2M is Algorithm 2 of Lu et al. (2022), written as
    D0 + ½ D1 with D1 = (x̂₀_i − x̂₀_{i−1})/r ("midpoint"); 3M is the third-order multistep form of Lu's
    reference code (= diffusers, k-diffusion). Its D2 = h²·x̂₀[s0, s1, s2] ≈ h² x̂₀''/2 is half the Taylor
    term h² x̂₀'' that its weight expects, so its global order is 2 (tests/test_dpm_solver.py measures it);
    ``third_order="taylor"`` doubles D2 and reaches order 3.
    """
    e = math.exp(-h)
    w = 1.0 - e * e if sde else 1.0 - e            # α_t(1 − e^{−2h}) for the SDE, −α_t(e^{−h} − 1) for the ODE
    m0 = x0s[-1]
    if len(x0s) == 1:
        return w, m0
    r0 = (lams[-1] - lams[-2]) / h
    d1_0 = (m0 - x0s[-2]) / r0
    if len(x0s) == 2:
        return w, m0 + 0.5 * d1_0
    assert not sde, "the SDE variant is second order"
    r1 = (lams[-2] - lams[-3]) / h
    d1_1 = (x0s[-2] - x0s[-3]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1) * (2.0 if third_order == "taylor" else 1.0)
    # weights of D0, D1, D2: 1 − e^{−h}, 1 − (1 − e^{−h})/h, −((e^{−h} − 1 + h)/h² − ½) (Taylor terms of the integral)
    phi1 = 1.0 - e
    phi2 = (e - 1.0) / h + 1.0
    phi3 = (e - 1.0 + h) / h**2 - 0.5
    return 1.0, phi1 * m0 + phi2 * d1 - phi3 * d2


def dpm_solver_steps(model: Model, diffusion: GaussianDiffusion, x_T: Tensor, noise: Noise = GLOBAL_NOISE,
                     clip_denoised: bool = True, t_start: int | None = None, *, order: int = 2,
                     sde: bool = False, third_order: ThirdOrder = "reference") -> Iterator[SampleStep]:
    """DPM-Solver++(``order``M) from paper time T (or ``t_start``) down to 0; ``sde`` for SDE-DPM-Solver++(2M).

    x_{t−1} = (σ_{t−1}/σ_t) x_t + α_{t−1}(1 − e^{−h}) D      (ODE; h = λ_{t−1} − λ_t)
    x_{t−1} = (σ_{t−1}/σ_t) e^{−h} x_t + α_{t−1}(1 − e^{−2h}) D + σ_{t−1} √(1 − e^{−2h}) z      (SDE)
    The first steps use the orders their history allows; the last step is first order (it lands on x̂₀),
    the second-to-last at most second order on chains of fewer than 15 steps (lower_order_final).
    ``third_order`` picks the D2 of order 3 (see ``_data_integral``; "reference" equals diffusers).
    """
    if order not in (1, 2, 3) or (sde and order > 2):
        raise ValueError(f"DPM-Solver++ order must be 1, 2 or 3 (1 or 2 for the SDE variant), got {order!r}")
    if third_order not in ("reference", "taylor"):
        raise ValueError(f"third_order must be 'reference' or 'taylor', got {third_order!r}")
    s = diffusion.schedule
    start = start_time(t_start, diffusion.T)
    x = x_T
    lams: list[float] = []
    x0s: list[Tensor] = []
    for t in range(start, 0, -1):
        with torch.no_grad():
            pred_x0 = diffusion.p_mean_var(model, x, time_batch(t, x), clip_denoised).pred_x0
        _, sigma_s, lam_s = _alpha_sigma_lambda(s, t)
        lams, x0s = (lams + [lam_s])[-order:], (x0s + [pred_x0])[-order:]
        if t == 1:  # σ_0 = 0: every order's update reduces to x̂₀ (and the SDE adds no noise)
            yield SampleStep(t, pred_x0, pred_x0)
            return
        alpha_t, sigma_t, lam_t = _alpha_sigma_lambda(s, t - 1)
        h = lam_t - lam_s
        k = min(len(x0s), 2 if t == 2 and start < LOWER_ORDER_BELOW else order)
        weight, d = _data_integral(h, lams[-k:], x0s[-k:], sde, third_order)
        if sde:
            x = (sigma_t / sigma_s * math.exp(-h)) * x + (alpha_t * weight) * d
            x = x + sigma_t * math.sqrt(-math.expm1(-2 * h)) * noise.randn(tuple(x.shape), x.device)
        else:
            x = (sigma_t / sigma_s) * x + (alpha_t * weight) * d
        yield SampleStep(t, x, pred_x0)


def dpmpp_2m_steps(model: Model, diffusion: GaussianDiffusion, x_T: Tensor, noise: Noise = GLOBAL_NOISE,
                   clip_denoised: bool = True, t_start: int | None = None) -> Iterator[SampleStep]:
    """DPM-Solver++(2M): deterministic, second order (Lu et al. 2022, Algorithm 2)."""
    return dpm_solver_steps(model, diffusion, x_T, noise, clip_denoised, t_start, order=2)


def dpmpp_3m_steps(model: Model, diffusion: GaussianDiffusion, x_T: Tensor, noise: Noise = GLOBAL_NOISE,
                   clip_denoised: bool = True, t_start: int | None = None) -> Iterator[SampleStep]:
    """DPM-Solver++(3M) in the reference form (as diffusers): its D2 term makes it second order, measured."""
    return dpm_solver_steps(model, diffusion, x_T, noise, clip_denoised, t_start, order=3)


def dpmpp_3m_taylor_steps(model: Model, diffusion: GaussianDiffusion, x_T: Tensor, noise: Noise = GLOBAL_NOISE,
                         clip_denoised: bool = True, t_start: int | None = None) -> Iterator[SampleStep]:
    """DPM-Solver++(3M) with the Taylor second difference (Lu et al. 2022, Eq. 15): third order, measured."""
    return dpm_solver_steps(model, diffusion, x_T, noise, clip_denoised, t_start, order=3, third_order="taylor")


def sde_dpmpp_2m_steps(model: Model, diffusion: GaussianDiffusion, x_T: Tensor, noise: Noise = GLOBAL_NOISE,
                       clip_denoised: bool = True, t_start: int | None = None) -> Iterator[SampleStep]:
    """SDE-DPM-Solver++(2M): the reverse SDE in data-prediction form, fresh noise each step."""
    return dpm_solver_steps(model, diffusion, x_T, noise, clip_denoised, t_start, order=2, sde=True)
