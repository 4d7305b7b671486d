"""The gradient of the discretized decoder (Eq. 13) far in its tails, against mpmath; its forward pinned bit for bit.

Autograd through torch.special.log_ndtr loses the gradient when the bin lies many σ from the mean (wrong digits,
then NaN); the decoder has its own backward for that, and these tests hold it to an exact reference.
"""

from __future__ import annotations

import itertools
import math

import mpmath
import pytest
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.likelihood import discretized_gaussian_log_likelihood
from ddpm.schedules import Schedule, make_betas

Tensor = torch.Tensor


# the forward as pinned (commit 8bec904): files from the lossless compressor depend on every bit of it
def _pinned_log1mexp(a: Tensor) -> Tensor:
    a = a.clamp(max=-1e-30)
    near_zero = a > -math.log(2)
    a_near, a_far = torch.where(near_zero, a, -1.0), torch.where(near_zero, -1.0, a)
    return torch.where(near_zero, torch.log(-torch.expm1(a_near)), torch.log1p(-torch.exp(a_far)))


def _pinned_decoder(x: Tensor, mean: Tensor, log_scale: Tensor, levels: int) -> Tensor:
    half_bin = 1.0 / (levels - 1)
    inv_std = torch.exp(-log_scale)
    upper = (x - mean + half_bin) * inv_std
    lower = (x - mean - half_bin) * inv_std
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_sf_lower = torch.special.log_ndtr(-lower)
    far = torch.where(lower > 0, log_sf_lower, log_cdf_upper)
    mid = torch.where(
        lower > 0,
        log_sf_lower + _pinned_log1mexp(torch.special.log_ndtr(-upper) - log_sf_lower),
        log_cdf_upper + _pinned_log1mexp(torch.special.log_ndtr(lower) - log_cdf_upper),
    )
    mid = torch.where(torch.isneginf(far), far, mid)
    eps = 1e-6
    return torch.where(x < -1 + eps, log_cdf_upper, torch.where(x > 1 - eps, log_sf_lower, mid))


def _bits(t: Tensor) -> Tensor:
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("levels", [2, 17, 256])
def test_forward_is_bit_identical_to_the_pinned_decoder(dtype, levels):
    x = torch.linspace(-1, 1, levels, dtype=dtype)[:, None, None]
    mean = torch.cat([torch.linspace(-3, 3, 121, dtype=dtype), x.flatten() + 1 / (levels - 1)])[None, :, None]
    log_scale = torch.tensor([-400, -100, -60, -30, -12, -5, -2, -0.5, 0, 1, 3, 5], dtype=dtype)[None, None, :]
    want = _pinned_decoder(x, mean, log_scale, levels)
    assert torch.isneginf(want).any() and torch.isfinite(want).any()  # the grid reaches the underflow rule
    got = discretized_gaussian_log_likelihood(x, mean, log_scale, levels)
    assert torch.equal(_bits(got), _bits(want))
    # the same bits on the autograd path, and with the compressor's shapes: values (L, 1) against (1, n)
    m, s = mean.flatten()[None, :].requires_grad_(), torch.full((1, mean.numel()), -4.0, dtype=dtype).requires_grad_()
    got = discretized_gaussian_log_likelihood(x[:, :, 0], m, s, levels)
    assert torch.equal(_bits(got.detach()), _bits(_pinned_decoder(x[:, :, 0], m.detach(), s.detach(), levels)))


def _reference(upper: float, lower: float, log_scale: float, kind: str) -> tuple[float, float, float, float]:
    """mpmath: ∂ log p/∂mean and ∂ log p/∂log σ of the bin [mean + lower, mean + upper], and the size of the
    terms each is the sum of (the scale that float arithmetic's error is relative to)."""
    s = mpmath.exp(log_scale)
    a, b = mpmath.mpf(lower) / s, mpmath.mpf(upper) / s
    if kind == "first":      # p = Φ(b)
        p, r_a, r_b = mpmath.ncdf(b), 0, mpmath.npdf(b) / mpmath.ncdf(b)
    elif kind == "last":     # p = 1 − Φ(a)
        p = mpmath.ncdf(-a)
        r_a, r_b = mpmath.npdf(a) / p, 0
    else:                    # p = Φ(b) − Φ(a), taken on the tail side where mpmath keeps every digit
        p = mpmath.ncdf(-a) - mpmath.ncdf(-b) if a > 0 else mpmath.ncdf(b) - mpmath.ncdf(a)
        r_a, r_b = mpmath.npdf(a) / p, mpmath.npdf(b) / p
    return (float((r_a - r_b) / s), float(a * r_a - b * r_b), float((abs(r_a) + abs(r_b)) / s),
            float(abs(a * r_a) + abs(b * r_b)))


def _tail_grid(levels: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """The bins at −1, in the middle and at +1; means 0 to 60 bins either way; log σ from −30 to 3."""
    grid = torch.linspace(-1, 1, levels, dtype=dtype)
    bins = [grid[0], grid[levels // 2 + 1], grid[-1]]
    offsets = [sign * k for k in (0, 0.3, 0.5, 0.9, 1, 1.5, 2, 3, 5, 8, 13, 20, 30, 45, 60) for sign in (1, -1)]
    log_scales = (-30, -20, -12, -8, -5, -3, -2, -1, 0, 1, 2, 3)
    rows = [(float(x), float(x) + 2 * k / (levels - 1), ls)
            for x, k, ls in itertools.product(bins, offsets, log_scales)]
    return tuple(torch.tensor(col, dtype=dtype) for col in zip(*rows))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("levels", [17, 256])
def test_gradient_matches_mpmath_far_in_the_tails(dtype, levels):
    x, mean, log_scale = _tail_grid(levels, dtype)
    mean.requires_grad_()
    log_scale.requires_grad_()
    discretized_gaussian_log_likelihood(x, mean, log_scale, levels).sum().backward()
    # the reference takes the bin's edges x − mean ± 1/(L − 1) as rounded in `dtype` (the forward's own
    # rounding, which it must keep); from there on everything is exact
    h = 1 / (levels - 1)
    upper, lower = (x - mean.detach() + h).tolist(), (x - mean.detach() - h).tolist()
    kinds = ["first" if v < -1 + 1e-6 else "last" if v > 1 - 1e-6 else "middle" for v in x.tolist()]
    mpmath.mp.dps = 40
    ref = torch.tensor([_reference(u, lo, ls, k) for u, lo, ls, k in zip(upper, lower, log_scale.tolist(), kinds)],
                       dtype=torch.float64)
    # how many σ the bin's nearer edge lies from the mean: beyond 5 the old autograd gradient was lost
    tail = ((x - mean.detach()).abs() - h).clamp(min=0).double() / log_scale.detach().double().exp() > 5
    assert tail.sum() > 300
    floor = 1e-30 if dtype == torch.float32 else 1e-300  # below this a gradient is 0 to within its own precision
    # float32's forward measures a bin much narrower than σ to ~3e-4 (a difference of two log Φ near log ½);
    # the gradient inherits that, and is exact to a few ulps everywhere else, the far tail included
    rtol_tail, rtol = (1e-4, 1e-3) if dtype == torch.float32 else (1e-11, 1e-11)
    for got, want, scale in ((mean.grad, ref[:, 0], ref[:, 2]), (log_scale.grad, ref[:, 1], ref[:, 3])):
        assert torch.isfinite(got).all()
        err = (got.double() - want).abs() / scale.clamp(min=floor)
        assert err[tail].max() < rtol_tail, err[tail].max()
        assert err.max() < rtol, err.max()


def test_gradient_with_log_scale_minus_5_and_the_mean_30_bins_away():
    """float32, levels 256: the nearer edge lies ~35σ out, where autograd through log_ndtr had the gradient wrong."""
    x, mean, log_scale = torch.tensor([0.2]), torch.tensor([0.2 - 30 * 2 / 255]), torch.tensor([-5.0])
    mean.requires_grad_()
    log_scale.requires_grad_()
    discretized_gaussian_log_likelihood(x, mean, log_scale, 256).sum().backward()
    h = 1 / 255
    want_mean, want_log_scale, _, _ = _reference(float(x - mean.detach() + h), float(x - mean.detach() - h), -5.0,
                                                 "middle")
    assert mean.grad.item() == pytest.approx(want_mean, rel=1e-5)
    assert log_scale.grad.item() == pytest.approx(want_log_scale, rel=1e-5)


@pytest.mark.parametrize("log_scale", [-60.0, -100.0])
def test_gradient_is_finite_where_the_mass_underflows(log_scale):
    """σ = e^-60 in float32: the bins off the mean have log mass −∞ (no gradient); the mean's own bin has ≈ 0."""
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0, 0.5])  # the grid of 5 levels; the mean lies in the last one's bin
    mean, s = torch.full((5,), 0.6, requires_grad=True), torch.full((5,), log_scale, requires_grad=True)
    log_p = discretized_gaussian_log_likelihood(x, mean, s, 5)
    assert torch.isneginf(log_p[:4]).all()
    log_p[4].backward(retain_graph=True)  # the finite term alone
    assert torch.equal(mean.grad, torch.zeros(5)) and torch.equal(s.grad, torch.zeros(5))
    mean.grad, s.grad = None, None
    torch.where(torch.isfinite(log_p), log_p, 0.0).sum().backward()  # torch.where's 0 times each −∞ term's gradient
    assert torch.isfinite(mean.grad).all() and torch.isfinite(s.grad).all()


def test_gradcheck_in_float64_with_broadcast_inputs():
    """Every bin kind, means from inside the bin to ~45σ away, and the compressor's broadcast shapes."""
    g = torch.Generator().manual_seed(0)
    levels = 17
    x = torch.linspace(-1, 1, levels, dtype=torch.float64)[:, None]                            # (L, 1)
    mean = (2.5 * torch.rand(1, 6, generator=g, dtype=torch.float64) - 1.25).requires_grad_()  # (1, n)
    log_scale = torch.tensor([[-3.0]], dtype=torch.float64, requires_grad=True)                # (1, 1)
    assert torch.autograd.gradcheck(lambda m, s: discretized_gaussian_log_likelihood(x, m, s, levels),
                                     (mean, log_scale))
    # x itself (away from the outer bins, where the bin kind would change under the finite difference)
    inner = x[1:-1].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v, s: discretized_gaussian_log_likelihood(v, mean.detach(), s, levels),
                                    (inner, log_scale.detach().clone().requires_grad_()))


@pytest.mark.parametrize("log_var", [-10.0, -40.0])
@pytest.mark.parametrize("loss_type", ["vlb", "hybrid"])
def test_the_learned_decoder_trains_far_from_the_data(loss_type, log_var):
    """L_0 of the bound with a learned σ (Eq. 13 at t = 1) and the mean 30 bins off, as early in training:
    float32 gradients of the loss match float64's (which the mpmath test above pins). The old autograd was off
    by 7e-5 at log σ = −5 and by 100% at log σ = −20."""
    d = GaussianDiffusion(Schedule.from_betas(make_betas("linear", 1000)), "x0", "learned", loss_type)
    x0 = torch.tensor([-1.0, -0.2, 0.2, 1.0]).reshape(1, 1, 2, 2).repeat(2, 1, 1, 1)   # both outer bins, two middle
    offset = torch.tensor([-30.0, 30.0, -30.0, 30.0]).reshape(1, 1, 2, 2) * 2 / 255
    t = torch.ones(2, dtype=torch.long)

    def grads(dtype: torch.dtype) -> Tensor:
        output = torch.cat([x0 - offset, torch.full_like(x0, log_var)], dim=1).to(dtype).requires_grad_()
        x0_, noise = x0.to(dtype), torch.zeros_like(x0, dtype=dtype)
        d.training_losses(lambda x_t, t: output, x0_, t, noise).loss.sum().backward()
        return output.grad

    got, want = grads(torch.float32), grads(torch.float64)
    assert torch.isfinite(got).all() and (want[:, 1] != 0).all()
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=0)
