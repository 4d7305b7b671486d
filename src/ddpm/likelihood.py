"""Gaussian KL, the discretized Gaussian decoder (Eq. 13) and unit conversion to bits/dim."""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
                  - 1.0)


def gaussian_log_density(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log N(x; mean, e^{2 log_scale}) elementwise, in nats (a continuous density)."""
    z = (x - mean) * torch.exp(-log_scale)
    return -0.5 * z**2 - log_scale - 0.5 * math.log(2 * math.pi)


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor, levels: int = 256) -> Tensor:
    """log p(x) of Eq. 13 elementwise, in nats: the Gaussian mass of x's bin.

    ``x`` holds data on the grid of ``levels`` values spaced 2/(levels − 1) over [-1, 1]; each bin is
    x ± 1/(levels − 1), the outer bins extended to ∓∞.
    """
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    half_bin = 1.0 / (levels - 1)
    inv_std = torch.exp(-log_scale)
    upper = (x - mean + half_bin) * inv_std
    lower = (x - mean - half_bin) * inv_std
    log_cdf_upper = torch.special.log_ndtr(upper)        # log Φ(upper), for the bin at -1
    log_sf_lower = torch.special.log_ndtr(-lower)        # log(1 − Φ(lower)), for the bin at +1
    # log(Φ(upper) − Φ(lower)) computed on the side of the bin away from the mean, so it does not
    # cancel to zero when the bin lies far in a tail
    far = torch.where(lower > 0, log_sf_lower, log_cdf_upper)  # the log mass beyond the bin's nearer edge
    mid = torch.where(
        lower > 0,
        log_sf_lower + _log1mexp(torch.special.log_ndtr(-upper) - log_sf_lower),
        log_cdf_upper + _log1mexp(torch.special.log_ndtr(lower) - log_cdf_upper),
    )
    # a bin so far out that even that mass underflows (σ below ~e^-50 in float32) has log mass −∞, not −∞ − (−∞)
    mid = torch.where(torch.isneginf(far), far, mid)
    eps = 1e-6  # outer bins are recognised with a tolerance far below the bin width
    return torch.where(x < -1 + eps, log_cdf_upper, torch.where(x > 1 - eps, log_sf_lower, mid))


def _log1mexp(a: Tensor) -> Tensor:
    """log(1 − e^a) for a ≤ 0, accurate near both ends."""
    a = a.clamp(max=-1e-30)
    near_zero = a > -math.log(2)
    # each branch sees only inputs where it is finite, so the unused one cannot put NaN into gradients
    a_near, a_far = torch.where(near_zero, a, -1.0), torch.where(near_zero, -1.0, a)
    return torch.where(near_zero, torch.log(-torch.expm1(a_near)), torch.log1p(-torch.exp(a_far)))


def nats_to_bits_per_dim(nats: Tensor, dims: int) -> Tensor:
    """A per-example total in nats as bits per dimension."""
    return nats / (dims * math.log(2.0))


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the first (batch)."""
    return x.reshape(x.shape[0], -1).mean(dim=1)
