"""The training objectives of Table 2 checked against independent derivations.

Gaussian data x_0 ~ N(m, v) has a known Bayes-optimal reverse process: x_0 | x_t is Gaussian with
variance v_post = v(1 − ᾱ_t)/(ᾱ_t v + 1 − ᾱ_t), so the expected loss of the optimal model is known in
closed form for every objective (L_simple, x₀-MSE, μ̃-MSE, the bound with fixed or learned Σ).
"""

import math

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion, q_sample
from ddpm.schedules import Schedule, gather, make_betas

T = 1000
S = Schedule.from_betas(make_betas("linear", T))
M, V = 0.3, 0.2   # data mean and variance
N = 40_000        # Monte Carlo draws per t


def _optimal_output(mean_type, x_t, t, log_var=None):
    """The Bayes-optimal network output for x_0 ~ N(M, V) (and a constant learned log σ², if given)."""
    a = gather(S.sqrt_alpha_bar, t, x_t.ndim, torch.float64)
    b2 = gather(1 - S.alpha_bar, t, x_t.ndim, torch.float64)
    x0_hat = M + a * V * (x_t - a * M) / (a**2 * V + b2)        # E[x_0 | x_t]
    out = {
        "eps": (x_t - a * x0_hat) / b2.sqrt(),                   # E[ε | x_t]
        "x0": x0_hat,
        "mu": gather(S.posterior_coef_x0, t, x_t.ndim, torch.float64) * x0_hat
        + gather(S.posterior_coef_xt, t, x_t.ndim, torch.float64) * x_t,
    }[mean_type]
    return out if log_var is None else torch.cat([out, torch.full_like(out, log_var)], 1)


def _closed_forms(t):
    """v_post, the x_0-weight c_0 of μ̃_t (Eq. 7) and β̃_t at paper time t > 1."""
    ab = S.alpha_bar[t - 1].item()
    v_post = V * (1 - ab) / (ab * V + 1 - ab)
    return v_post, S.posterior_coef_x0[t - 1].item(), S.beta_tilde[t - 1].item(), ab


def _mc(d, t, log_var=None, seed=0):
    g = torch.Generator().manual_seed(seed + t)
    x0 = M + math.sqrt(V) * torch.randn(N, 1, generator=g, dtype=torch.float64)
    noise = torch.randn(N, 1, generator=g, dtype=torch.float64)
    tt = torch.full((N,), t)
    x_t = q_sample(S, x0, tt, noise)
    out = _optimal_output(d.mean_type, x_t, tt, log_var)
    terms = d.training_losses(lambda x, step: out, x0, tt, noise)
    return terms.loss.mean().item(), terms.loss.std().item() / math.sqrt(N)


@pytest.mark.parametrize("t", [2, 10, 100, 500, 1000])
@pytest.mark.parametrize("mean_type,loss_type", [("eps", "simple"), ("x0", "simple"), ("mu", "mu_mse")])
def test_expected_regression_loss_of_the_optimal_model_is_the_posterior_variance(t, mean_type, loss_type):
    """E[L_simple] = Var(ε|x_t) = ᾱ v_post/(1 − ᾱ); x₀-MSE: v_post; μ̃-MSE: c_0² v_post (unweighted)."""
    v_post, c0, _, ab = _closed_forms(t)
    expected = {"eps": ab * v_post / (1 - ab), "x0": v_post, "mu": c0**2 * v_post}[mean_type]
    got, se = _mc(GaussianDiffusion(S, mean_type, "fixed_beta", loss_type), t)
    assert abs(got - expected) < 5 * se + 1e-12 * expected


@pytest.mark.parametrize("t", [2, 10, 100, 1000])
@pytest.mark.parametrize("mean_type", ["eps", "x0", "mu"])
@pytest.mark.parametrize("var_type", ["fixed_beta", "fixed_beta_tilde"])
def test_expected_bound_loss_is_the_gaussian_kl_in_bits_per_dim(t, mean_type, var_type):
    """L_{t−1} with fixed Σ: E KL = ½(β̃/σ² − 1 + log(σ²/β̃) + c_0² v_post/σ²) nats, reported in bits per dim."""
    v_post, c0, bt, _ = _closed_forms(t)
    s2 = S.betas[t - 1].item() if var_type == "fixed_beta" else bt
    expected = 0.5 * (bt / s2 - 1 + math.log(s2 / bt) + c0**2 * v_post / s2) / math.log(2)
    got, se = _mc(GaussianDiffusion(S, mean_type, var_type, "vlb"), t)
    assert abs(got - expected) < 5 * se + 1e-9 * expected


@pytest.mark.parametrize("t", [2, 50, 700])
def test_the_learned_variance_that_minimises_the_expected_bound_is_the_analytic_optimum(t):
    """With the optimal mean, E[L_{t−1}] over σ² is minimised at σ*² = β̃_t + c_0² v_post (Bao et al. 2022)."""
    v_post, c0, bt, _ = _closed_forms(t)
    star = math.log(bt + c0**2 * v_post)
    d = GaussianDiffusion(S, "eps", "learned", "vlb")
    at_star = _mc(d, t, star)[0]
    for delta in (-0.3, 0.3):
        s2 = math.exp(star + delta)
        expected = 0.5 * (bt / s2 - 1 + math.log(s2 / bt) + c0**2 * v_post / s2) / math.log(2)
        got, se = _mc(d, t, star + delta)  # the same draws: the difference is exact up to float error
        assert abs(got - expected) < 5 * se + 1e-9
        assert got > at_star


def _phi(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


@pytest.mark.parametrize("mean_type,var_type", [("eps", "fixed_beta"), ("x0", "fixed_beta_tilde"), ("mu", "learned")])
def test_the_bound_loss_at_t1_is_the_discretized_decoder_of_eq13(mean_type, var_type):
    """L_0 = −log p_θ(x_0|x_1) with bins x ± 1/255, edges to ±∞ (Eq. 13), in bits per dim, inside the training loss."""
    d = GaussianDiffusion(S, mean_type, var_type, "vlb")
    g = torch.Generator().manual_seed(3)
    x0 = torch.round((torch.rand(3, 1, 2, 2, generator=g, dtype=torch.float64) * 2 - 1) * 127.5) / 127.5
    x0[0, 0, 0, 0], x0[1, 0, 0, 0] = -1.0, 1.0
    learned = var_type == "learned"
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    # a mean output near its target, so that the decoder's mean lies within a few bins of x_0
    out = (noise if mean_type == "eps" else x0) + 0.003 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    if learned:
        out = torch.cat([out, torch.full_like(out, -8.0)], 1)
    t = torch.ones(3, dtype=torch.long)
    loss = d.training_losses(lambda x, step: out, x0, t, noise).loss
    x1 = q_sample(S, x0, t, noise)
    if mean_type == "eps":
        mean = (x1 - S.betas[0].sqrt() * out) / S.alphas[0].sqrt()  # Eq. 11 at t = 1
    elif mean_type == "x0":
        mean = out  # μ̃_1(x_1, x̂₀) = x̂₀: the posterior at t = 1 puts all its weight on x_0
    else:
        mean = out[:, :1]
    # both fixed variances use β̃_2 at t = 1 (the official code's clipping); the learned one is the output
    sigma = math.sqrt(S.beta_tilde[1].item()) if not learned else math.exp(-4.0)
    expected = []
    for b in range(3):
        bits = 0.0
        for x, mu in zip(x0[b].flatten().tolist(), mean[b].flatten().tolist()):
            hi = 1.0 if x > 1 - 1e-6 else _phi((x + 1 / 255 - mu) / sigma)
            lo = 0.0 if x < -1 + 1e-6 else _phi((x - 1 / 255 - mu) / sigma)
            bits -= math.log2(hi - lo)
        expected.append(bits / 4)
    assert torch.allclose(loss, torch.tensor(expected, dtype=torch.float64), rtol=1e-7)


@pytest.mark.parametrize("mean_type", ["eps", "x0", "mu"])
def test_hybrid_stops_the_gradient_of_the_bound_at_the_mean_and_keeps_it_for_sigma(mean_type):
    """L_simple + λ·T·L_{t−1}: ∂/∂mean is the MSE's alone, although L_{t−1} itself depends on the mean
    (finite differences), and ∂/∂v is λ·T·∂L_{t−1}/∂v (finite differences)."""
    g = torch.Generator().manual_seed(9)
    B = 6
    x0 = torch.round((torch.rand(B, 1, 2, 2, generator=g, dtype=torch.float64) * 2 - 1) * 127.5) / 127.5
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 2, 10, 200, 600, 1000])
    x_t = q_sample(S, x0, t, noise)
    out = torch.cat([_optimal_output(mean_type, x_t, t) + 0.05 * torch.randn(x0.shape, generator=g,
                                                                              dtype=torch.float64),
                     0.4 * torch.rand(x0.shape, generator=g, dtype=torch.float64) - 0.2], 1).requires_grad_()
    hybrid = GaussianDiffusion(S, mean_type, "learned_range", "hybrid")
    vlb_only = GaussianDiffusion(S, mean_type, "learned_range", "vlb")
    target = {"eps": noise, "x0": x0, "mu": hybrid.q_posterior(x0, x_t, t).mean}[mean_type]
    hybrid.training_losses(lambda x, step: out, x0, t, noise).loss.sum().backward()
    grad = out.grad.clone()
    mse_grad = 2 * (out[:, :1] - target).detach() / 4  # ∂ mean_flat((target − out)²)/∂out over 4 pixels
    assert torch.allclose(grad[:, :1], mse_grad, rtol=1e-10, atol=1e-14)

    def vlb(o):
        return vlb_only.training_losses(lambda x, step: o, x0, t, noise).loss.sum().item()

    h = 1e-6
    for ch in (0, 1):  # perturb one pixel of every example in channel ch (0: mean, 1: v)
        e = torch.zeros_like(out)
        e[:, ch, 0, 1] = h
        fd = (vlb(out.detach() + e) - vlb(out.detach() - e)) / (2 * h)
        if ch == 0:
            assert abs(fd) > 1e-3  # the bound does depend on the mean: the zero above is the stop-gradient
        else:
            lam_T = hybrid.hybrid_lambda * T
            assert grad[:, 1, 0, 1].sum().item() == pytest.approx(lam_T * fd, rel=1e-5)


def test_bound_gradients_stay_finite_where_the_unused_term_of_eq5_would_give_nan():
    """L_{t−1} picks the KL (t > 1) or the decoder (t = 1) per example; the term it does not pick must not put
    NaN into the gradient (torch.where passes 0·∞ = NaN back through an unused branch)."""
    # a learned log σ² of −23 at t > 1: the KL and its gradient are finite, the unused decoder's is not
    d = GaussianDiffusion(S, "eps", "learned", "vlb")
    g = torch.Generator().manual_seed(0)
    x0 = torch.round((torch.rand(8, 1, 2, 2, generator=g) * 2 - 1) * 127.5) / 127.5
    t = torch.tensor([2, 30, 150, 370, 500, 700, 900, 1000])
    noise = torch.randn(x0.shape, generator=g)
    out = torch.cat([0.3 * torch.randn(x0.shape, generator=g), torch.full(x0.shape, -23.0)], 1).requires_grad_()
    terms = d.training_losses(lambda x, step: out, x0, t, noise)
    assert torch.isfinite(terms.loss).all()
    terms.loss.sum().backward()
    assert torch.isfinite(out.grad).all()
    # and the gradient is the KL's (Eq. 5 for t > 1), computed here without the decoder
    x_t = q_sample(S, x0, t, noise)
    o = out.detach().clone().requires_grad_()
    p = d.p_mean_var(lambda x, step: o, x_t, t)
    q = d.q_posterior(x0, x_t, t)
    kl = 0.5 * (p.log_var - q.log_var + torch.exp(q.log_var - p.log_var)
                + (q.mean - p.mean) ** 2 * torch.exp(-p.log_var) - 1)
    (kl.flatten(1).mean(1) / math.log(2)).sum().backward()
    assert torch.allclose(out.grad, o.grad, rtol=1e-5)


def test_training_losses_refuse_times_outside_1_to_T_and_a_t_per_batch_of_another_length():
    """t = 0 (the official code's first step) would otherwise read entry −1 of every table: step T, silently."""
    d = GaussianDiffusion(S)
    x0, noise = torch.zeros(2, 1, 2, 2), torch.randn(2, 1, 2, 2)
    model = lambda x, step: torch.zeros_like(x)  # noqa: E731
    for bad in (torch.tensor([0, 5]), torch.tensor([3, T + 1])):
        with pytest.raises(ValueError, match=f"paper times in 1..{T}"):
            d.training_losses(model, x0, bad, noise)
    with pytest.raises(ValueError, match="one paper time per example"):
        d.training_losses(model, x0, torch.tensor([4]), noise)
    assert d.training_losses(model, x0, torch.tensor([1, T]), noise).loss.shape == (2,)


@pytest.mark.parametrize("T_", [1000, 4000, 37])
def test_schedules_are_the_official_get_beta_schedule_and_improved_diffusions_cosine(T_):
    """'linear' and 'quad' as diffusion_tf's get_beta_schedule (numpy, float64), to a few ulps; 'cosine' as
    improved-diffusion's betas_for_alpha_bar (s = 0.008, β ≤ 0.999), re-derived here in Python floats."""
    import numpy as np

    for name, ref in (("linear", np.linspace(1e-4, 0.02, T_, dtype=np.float64)),
                      ("quadratic", np.linspace(1e-4**0.5, 0.02**0.5, T_, dtype=np.float64) ** 2),
                      ("constant", 0.02 * np.ones(T_, dtype=np.float64))):
        ours = make_betas(name, T_).numpy()
        assert np.all(np.abs(ours - ref) <= 4 * np.spacing(ref)), name

    def f(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    ref = np.array([min(1 - f((i + 1) / T_) / f(i / T_), 0.999) for i in range(T_)])
    ours = make_betas("cosine", T_).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-10)
    assert ours[-1] == 0.999  # f(1) = cos²(π/2) ≈ 0: the last step is clipped


def test_respacing_is_improved_diffusions_rescaled_betas():
    """β'_k = 1 − ᾱ_{s_k}/ᾱ_{s_{k−1}} over the kept steps, as respace.py builds them, with the original steps kept."""
    kept = [1, 4, 9, 100, 101, 640, 1000]
    r = S.respace(kept)
    last, betas = 1.0, []
    for i, ab in enumerate(S.alpha_bar.tolist()):
        if i + 1 in kept:
            betas.append(1 - ab / last)
            last = ab
    assert torch.allclose(r.betas, torch.tensor(betas, dtype=torch.float64), rtol=1e-12, atol=0)
    assert r.timesteps.tolist() == [s - 1 for s in kept]  # the network still sees the original chain's step
