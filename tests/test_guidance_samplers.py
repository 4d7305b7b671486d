"""Classifier-free guidance checked against hand derivations: each sampler's first guided step computed from two
plain network calls (conditional and "no class") and the β table alone, every parameterization, clipping on."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm.config import ConfigError
from ddpm.rng import GlobalNoise
from ddpm.sampling import SAMPLERS, Guided, guided, sample
from ddpm.sampling.analytic import AnalyticDiffusion
from ddpm.sampling.guidance import class_labels
from test_guidance import K, _cond

W = 3.0  # large enough that the guided x̂₀ leaves [-1, 1] somewhere, so clipping is exercised


class ZeroNoise:
    """A noise source of zeros: a stochastic sampler's step is then its mean."""

    def randn(self, shape, device="cpu"):
        return torch.zeros(shape, device=device)


def _tables(d):
    """ᾱ_t, ᾱ_{t−1} (float64, index t − 1) from β alone: the hand side does not read the schedule's other tables."""
    betas = d.schedule.betas.double()
    a_bar = torch.cumprod(1 - betas, 0)
    return betas, a_bar, torch.cat([torch.ones(1, dtype=torch.float64), a_bar[:-1]])


def _eps_of(output, mean_type, x, t, d):
    """ε implied by one network output at (x_t, t), by hand (Eqs. 4, 11 and 15)."""
    betas, a_bar, _ = _tables(d)
    b, ab = betas[t - 1], a_bar[t - 1]
    out, x = output.double(), x.double()
    if mean_type == "eps":
        return out
    if mean_type == "x0":
        return (x - ab.sqrt() * out) / (1 - ab).sqrt()
    # μ = (x_t − β_t/√(1 − ᾱ_t) ε)/√α_t  (Eq. 11)  ⇒  ε = (x_t − √α_t μ)·√(1 − ᾱ_t)/β_t
    return (x - (1 - b).sqrt() * out) * (1 - ab).sqrt() / b


def _guided_x0(net, mean_type, x, t, y, d, clip=True):
    """(x̂₀, ε̂) of ε̃ = (1 + w) ε(x, c) − w ε(x, ∅), from two separate network calls of batch B each."""
    _, a_bar, _ = _tables(d)
    ab = a_bar[t - 1]
    steps = torch.full((x.shape[0],), t - 1)  # the network's 0-indexed time (unrespaced chain)
    C = x.shape[1]
    with torch.no_grad():
        out_c = net(x, steps, y=y)[:, :C]
        out_null = net(x, steps, y=torch.full_like(y, K))[:, :C]
    eps = (1 + W) * _eps_of(out_c, mean_type, x, t, d) - W * _eps_of(out_null, mean_type, x, t, d)
    x0 = (x.double() - (1 - ab).sqrt() * eps) / ab.sqrt()
    unclipped = x0
    if clip:
        x0 = x0.clamp(-1, 1)
    return x0, (x.double() - ab.sqrt() * x0) / (1 - ab).sqrt(), unclipped


def _hand_step(sampler, x0, eps, x, t, d, z):
    """x_{t−1} of ``sampler``'s first step (from x_T, no history) by the papers' formulas."""
    betas, a_bar, a_prev = _tables(d)
    ab, ap, b = a_bar[t - 1], a_prev[t - 1], betas[t - 1]
    x = x.double()
    posterior = (ap.sqrt() * b / (1 - ab)) * x0 + ((1 - b).sqrt() * (1 - ap) / (1 - ab)) * x  # Eq. 7
    if sampler in ("ancestral", "analytic-ddpm"):
        return posterior + (b.sqrt() if sampler == "ancestral" else 0.0) * z  # Algorithm 2, σ_t² = β_t
    if sampler in ("ddim", "analytic-ddim"):
        return ap.sqrt() * x0 + (1 - ap).sqrt() * eps  # DDIM Eq. 12, η = 0
    lam_s = 0.5 * math.log(ab / (1 - ab))
    lam_t = 0.5 * math.log(ap / (1 - ap))
    h = lam_t - lam_s
    ratio = math.sqrt((1 - ap) / (1 - ab))
    if sampler == "sde-dpm++2m":  # first order SDE-DPM-Solver++ (Lu et al. 2022)
        return ratio * math.exp(-h) * x + ap.sqrt() * (1 - math.exp(-2 * h)) * x0 \
            + (1 - ap).sqrt() * math.sqrt(1 - math.exp(-2 * h)) * z
    return ratio * x + ap.sqrt() * (1 - math.exp(-h)) * x0  # DPM-Solver++ first order (= DDIM in λ)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_each_samplers_guided_step_is_the_hand_derived_one(sampler):
    net, d = _cond()
    if SAMPLERS[sampler].needs_gamma:
        d = AnalyticDiffusion(d, torch.full((d.T,), 0.5, dtype=torch.float64))
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(11))
    y = torch.tensor([4, 0, 9])
    x0, eps, unclipped = _guided_x0(net, "eps", x_T, d.T, y, d)
    assert (unclipped.abs() > 1).any()  # the clip does act at this w
    stochastic = sampler in ("ancestral", "sde-dpm++2m")
    noise = GlobalNoise(torch.Generator().manual_seed(12)) if stochastic else ZeroNoise()
    z = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(12)).double() if stochastic else 0.0
    it = SAMPLERS[sampler].steps(guided(net, y, W, K, False), d, x_T, noise, True)
    first = next(it)
    assert first.t == d.T
    torch.testing.assert_close(first.pred_x0.double(), x0, rtol=0, atol=2e-5)
    torch.testing.assert_close(first.x.double(), _hand_step(sampler, x0, eps, x_T, d.T, d, z), rtol=0, atol=2e-5)


@pytest.mark.parametrize("mean_type", ["x0", "mu"])
def test_guiding_an_x0_or_mu_output_is_guiding_its_eps(mean_type):
    """The docstring's claim: ε, x̂₀ and μ̃ are affine in one another at fixed x_t and the weights sum to 1."""
    net, d = _cond(mean_type=mean_type)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(13))
    y = torch.tensor([1, 8])
    for t in (2, 9, d.T):
        x0, eps, _ = _guided_x0(net, mean_type, x, t, y, d)
        p = d.p_mean_var(guided(net, y, W, K, False), x, torch.full((2,), t), clip_denoised=True)
        torch.testing.assert_close(p.pred_x0.double(), x0, rtol=0, atol=5e-5)
        torch.testing.assert_close(p.pred_eps.double(), eps, rtol=0, atol=5e-4)


def test_learned_sigma_step_uses_the_conditional_variance():
    """Ancestral step of a learned-range Σ model: guided mean, σ² from the conditional half's v (Nichol & Dhariwal)."""
    net, d = _cond(var_type="learned_range", loss_type="hybrid")
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(14))
    y, t = torch.tensor([3, 6]), d.T
    x0, eps, _ = _guided_x0(net, "eps", x_T, t, y, d)
    with torch.no_grad():
        v = net(x_T, torch.full((2,), t - 1), y=y)[:, 1:].double()
    betas, a_bar, a_prev = _tables(d)
    log_beta_tilde = torch.log((1 - a_prev[t - 1]) / (1 - a_bar[t - 1]) * betas[t - 1])
    log_var = (v + 1) / 2 * torch.log(betas[t - 1]) + (1 - v) / 2 * log_beta_tilde
    z = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(15)).double()
    first = next(SAMPLERS["ancestral"].steps(guided(net, y, W, K, True), d, x_T,
                                             GlobalNoise(torch.Generator().manual_seed(15)), True))
    mean = _hand_step("analytic-ddpm", x0, eps, x_T, t, d, 0.0)  # the posterior mean alone
    torch.testing.assert_close(first.x.double(), mean + (0.5 * log_var).exp() * z, rtol=0, atol=2e-5)


def test_a_zero_dimensional_tensor_is_one_class_for_every_sample():
    net, d = _cond()
    assert class_labels(net, torch.tensor(3), 4).tolist() == [3, 3, 3, 3]
    a = sample(net, d, (2, 1, 8, 8), GlobalNoise(torch.Generator().manual_seed(1)), "ddim", steps=3,
               classes=torch.tensor(5), guidance=1.0)
    b = sample(net, d, (2, 1, 8, 8), GlobalNoise(torch.Generator().manual_seed(1)), "ddim", steps=3, classes=5,
               guidance=1.0)
    assert torch.equal(a, b)
    # a number that is no index, or an object that is no sequence: the clear error, not a TypeError from list()
    with pytest.raises(ConfigError, match=r"classes 3\.0 is not a class of this model; known classes"):
        class_labels(net, 3.0, 4)
    with pytest.raises(ConfigError, match=r"classes must be a class, a sequence of classes .* got <object"):
        class_labels(net, object(), 4)


@pytest.mark.parametrize("w", [float("nan"), float("inf"), -1.0])
def test_the_public_guided_wrapper_refuses_a_bad_weight(w):
    net, _ = _cond()
    y = torch.tensor([1])
    with pytest.raises(ConfigError, match=r"guidance must be a finite number >= 0"):
        guided(net, y, w, K, False)
    with pytest.raises(ConfigError, match=r"guidance must be a finite number >= 0"):
        Guided(net, y, w, K, False)
