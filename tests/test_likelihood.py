"""Gaussian KL and the discretized decoder of Eq. 13, against independent computations."""

import math

import mpmath
import pytest
import torch

from ddpm.likelihood import discretized_gaussian_log_likelihood, gaussian_log_density, normal_kl


def test_normal_kl_matches_monte_carlo_and_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, lv1, m2, lv2 = 0.3, math.log(0.5), -0.4, math.log(1.7)
    x = m1 + math.exp(0.5 * lv1) * torch.randn(400_000, generator=g, dtype=torch.float64)
    logq = gaussian_log_density(x, torch.tensor(m1), torch.tensor(0.5 * lv1, dtype=torch.float64))
    logp = gaussian_log_density(x, torch.tensor(m2), torch.tensor(0.5 * lv2, dtype=torch.float64))
    mc = (logq - logp).mean().item()
    kl = normal_kl(torch.tensor(m1), torch.tensor(lv1), torch.tensor(m2), torch.tensor(lv2)).item()
    se = (logq - logp).std().item() / math.sqrt(x.numel())
    assert abs(kl - mc) < 4 * se
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, math.exp(0.5 * lv1)), torch.distributions.Normal(m2, math.exp(0.5 * lv2))
    ).item()
    assert kl == pytest.approx(ref, rel=1e-6)
    assert normal_kl(torch.tensor(1.0), torch.tensor(0.2), torch.tensor(1.0), torch.tensor(0.2)).item() == 0


def _grid(levels: int) -> torch.Tensor:
    return torch.linspace(-1, 1, levels, dtype=torch.float64)


@pytest.mark.parametrize("levels", [2, 17, 256])
@pytest.mark.parametrize("mean,log_scale", [(0.0, -3.0), (0.9, -6.0), (-1.3, -1.0), (0.2, 1.5), (5.0, -4.0)])
def test_decoder_probabilities_sum_to_one(levels, mean, log_scale):
    x = _grid(levels)
    logp = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, log_scale), levels)
    assert torch.isfinite(logp).all()
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_decoder_bins_are_the_papers():
    """Interior bins are [x − 1/(L−1), x + 1/(L−1)]; the outer bins reach to ∓∞ (Eq. 13)."""
    levels, mean, scale = 256, 0.1, 0.05
    x = _grid(levels)
    logp = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, math.log(scale)), levels)
    phi = torch.distributions.Normal(torch.tensor(mean, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    h = 1 / (levels - 1)
    expected = phi.cdf(x + h) - phi.cdf(x - h)
    expected[0] = phi.cdf(x[0] + h)
    expected[-1] = 1 - phi.cdf(x[-1] - h)
    mask = expected > 1e-6  # where the float64 difference of CDFs is itself accurate
    assert torch.allclose(logp[mask], expected[mask].log(), rtol=1e-7, atol=1e-9)


def test_decoder_is_accurate_far_in_the_tails():
    """A bin 40 standard deviations from the mean: naive Φ differences give log 0; mpmath is the reference."""
    levels = 256
    x = torch.tensor([0.2, -0.5], dtype=torch.float64)
    mean = torch.tensor([-0.2, 0.3], dtype=torch.float64)
    log_scale = torch.full((2,), math.log(0.01), dtype=torch.float64)
    got = discretized_gaussian_log_likelihood(x, mean, log_scale, levels)
    mpmath.mp.dps = 50
    h = 1 / (levels - 1)
    for i in range(2):
        a = (x[i].item() - h - mean[i].item()) / 0.01
        b = (x[i].item() + h - mean[i].item()) / 0.01
        # compute the mass on the tail side, where mpmath keeps every digit
        mass = mpmath.ncdf(-a) - mpmath.ncdf(-b) if a > 0 else mpmath.ncdf(b) - mpmath.ncdf(a)
        ref = float(mpmath.log(mass))
        assert got[i].item() == pytest.approx(ref, rel=1e-6)


def test_a_bin_beyond_float_range_has_log_mass_minus_infinity_not_nan():
    """σ = e^-60 in float32: both edges of a middle bin off the mean underflow; the bin's mass is 0, log −∞."""
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0, 0.5])  # the grid of 5 levels; the mean lies in the last one's bin
    mean = torch.full((5,), 0.6)
    for log_scale in (-60.0, -100.0):
        got = discretized_gaussian_log_likelihood(x, mean, torch.full((5,), log_scale), 5)
        assert torch.isneginf(got[:4]).all(), got  # every bin but the one holding the mean
    # and where floats still hold the bins, nothing changed: finite, and the mean's own bin ~ log 1
    got = discretized_gaussian_log_likelihood(x, mean, torch.full((5,), -30.0), 5)
    assert torch.isfinite(got).all() and got[4].item() == pytest.approx(0.0, abs=1e-6)


def test_decoder_gradients_are_finite():
    x = _grid(17)
    mean = torch.linspace(-3, 3, 17, dtype=torch.float64, requires_grad=True)
    log_scale = torch.full((17,), -5.0, dtype=torch.float64, requires_grad=True)
    discretized_gaussian_log_likelihood(x, mean, log_scale, 17).sum().backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_scale.grad).all()
