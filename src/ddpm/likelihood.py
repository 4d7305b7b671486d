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
    return _DiscretizedGaussianLogLikelihood.apply(x, mean, log_scale, levels)


def _discretized_log_mass(x: Tensor, mean: Tensor, log_scale: Tensor, levels: int) -> Tensor:
    """The forward of Eq. 13 (its values are pinned: the compressor's codes depend on every bit)."""
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


class _DiscretizedGaussianLogLikelihood(torch.autograd.Function):
    """Eq. 13 with its own backward: autograd through log_ndtr loses the gradient far in a tail (even to NaN)."""

    @staticmethod
    def forward(ctx, x: Tensor, mean: Tensor, log_scale: Tensor, levels: int) -> Tensor:
        log_p = _discretized_log_mass(x, mean, log_scale, levels)
        ctx.save_for_backward(x, mean, log_scale, log_p)
        ctx.levels = levels
        return log_p

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        x, mean, log_scale, log_p = ctx.saved_tensors
        d_mean, d_log_scale = _log_mass_gradients(x, mean, log_scale, log_p, ctx.levels)
        grads = (-d_mean, d_mean, d_log_scale)  # log p depends on x and the mean through x − mean alone
        # an input broadcast in the forward gets its gradient summed back to its own shape
        return (*(g.mul(grad).sum_to_size(t.shape).to(t.dtype) if needed else None
                  for g, t, needed in zip(grads, (x, mean, log_scale), ctx.needs_input_grad)), None)


def _log_mass_gradients(x: Tensor, mean: Tensor, log_scale: Tensor, log_p: Tensor,
                        levels: int) -> tuple[Tensor, Tensor]:
    """∂ log p/∂mean and ∂ log p/∂log_scale of Eq. 13, given the forward's ``log_p``.

    With p = Φ(upper) − Φ(lower): ∂ log p/∂upper = φ(upper)/p and ∂ log p/∂lower = −φ(lower)/p, each ratio
    formed in log space; both edges move by −1/σ with the mean and by −edge with log σ.
    """
    half_bin, eps = 1.0 / (levels - 1), 1e-6  # the outer bins, recognised as in the forward, reach to ∓∞
    inv_std = torch.exp(-log_scale)
    upper = torch.where(x > 1 - eps, math.inf, (x - mean + half_bin) * inv_std)
    lower = torch.where(x < -1 + eps, -math.inf, (x - mean - half_bin) * inv_std)
    # the bin mirrored into the upper tail where it lies above the mean: p = Φ(−z_in) − Φ(−z_out), z_in ≤ z_out
    above = lower > 0
    z_in, z_out = torch.where(above, lower, -upper), torch.where(above, upper, -lower)
    log_ratio = torch.special.log_ndtr(-z_out) - torch.special.log_ndtr(-z_in)  # log Φ(−z_out)/Φ(−z_in)
    # φ(z_in)/p = [φ(z_in)/Φ(−z_in)] / (1 − Φ(−z_out)/Φ(−z_in)), the first factor without log φ − log Φ (which
    # cancels to noise far in a tail: log_ndtr's own backward); φ(z_out)/p is negligible wherever log φ − log p cancels
    log_r_in = _log_hazard(z_in) - _log1mexp(log_ratio)
    log_r_out = _log_normal_pdf(z_out) - log_p
    log_r_upper, log_r_lower = torch.where(above, log_r_out, log_r_in), torch.where(above, log_r_in, log_r_out)
    # φ/(σ p) at each edge, in log space so that an edge at ∓∞ (φ = 0) never meets 1/σ = ∞
    g_upper, g_lower = torch.exp(log_r_upper - log_scale), torch.exp(log_r_lower - log_scale)
    d_mean = g_lower - g_upper
    d_log_scale = (x - mean - half_bin) * g_lower - (x - mean + half_bin) * g_upper
    gone = torch.isneginf(log_p)  # a bin whose mass underflowed to 0 (log p = −∞ in the forward): no gradient
    return torch.where(gone, 0.0, d_mean), torch.where(gone, 0.0, d_log_scale)


def _log_normal_pdf(z: Tensor) -> Tensor:
    """log φ(z)."""
    return -0.5 * z**2 - 0.5 * math.log(2 * math.pi)


def _log_hazard(z: Tensor) -> Tensor:
    """log φ(z)/(1 − Φ(z)) = log √(2/π) − log erfcx(z/√2), accurate however far out z lies."""
    return 0.5 * math.log(2 / math.pi) - torch.log(torch.special.erfcx(z * math.sqrt(0.5)))


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
