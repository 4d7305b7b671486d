"""The diffusion mathematics, each formula against an independent derivation."""

import math

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion, p_mean_var_from_output, q_posterior, q_sample, x0_from_eps
from ddpm.rng import GlobalNoise
from ddpm.schedules import Schedule, gather, make_betas

T = 1000
S = Schedule.from_betas(make_betas("linear", T))


def _t(*ts):
    return torch.tensor(ts, dtype=torch.long)


def test_q_marginal_equals_composing_single_steps_of_eq2():
    """Eq. 4 against t single steps of Eq. 2: exact moment recursion and a Monte Carlo chain."""
    x0 = torch.tensor([0.7], dtype=torch.float64)
    mean, var = x0.clone(), torch.zeros(1, dtype=torch.float64)
    for t in range(1, T + 1):
        b = S.betas[t - 1]
        mean, var = (1 - b).sqrt() * mean, (1 - b) * var + b  # q(x_t|x_{t-1}) = N(√(1−β_t) x_{t−1}, β_t)
        if t in (1, 10, 500, 1000):
            assert mean.item() == pytest.approx((S.sqrt_alpha_bar[t - 1] * x0).item(), rel=1e-10)
            assert var.item() == pytest.approx(1 - S.alpha_bar[t - 1].item(), rel=1e-10)
    # Monte Carlo: run the chain for 300 steps on 200k particles, compare with q_sample's moments
    g = torch.Generator().manual_seed(0)
    x = torch.full((50_000,), 0.7, dtype=torch.float64)
    for t in range(1, 301):
        b = S.betas[t - 1]
        x = (1 - b).sqrt() * x + b.sqrt() * torch.randn(x.shape, generator=g, dtype=torch.float64)
    x0b = torch.full((50_000, 1), 0.7, dtype=torch.float64)
    direct = q_sample(S, x0b, torch.full((50_000,), 300), torch.randn(x0b.shape, generator=g, dtype=torch.float64))
    for a in (x, direct.flatten()):
        assert a.mean().item() == pytest.approx(0.7 * S.sqrt_alpha_bar[299].item(), abs=4 / math.sqrt(5e4))
        assert a.var().item() == pytest.approx(1 - S.alpha_bar[299].item(), rel=0.02)


@pytest.mark.parametrize("t", [2, 3, 50, 999, 1000])
def test_posterior_equals_brute_force_gaussian_conditioning(t):
    """q(x_{t−1}|x_t, x_0) from conditioning the joint Gaussian of (x_{t−1}, x_t) given x_0 (Eqs. 6-7)."""
    x0 = torch.tensor([[0.3, -0.8]], dtype=torch.float64)
    x_t = torch.tensor([[1.1, 0.2]], dtype=torch.float64)
    ab_prev, a = S.alpha_bar_prev[t - 1], S.alphas[t - 1]
    # joint: x_{t−1} ~ N(√ᾱ_{t−1} x0, 1 − ᾱ_{t−1}); x_t = √α_t x_{t−1} + √β_t ε
    m1, v1 = ab_prev.sqrt() * x0, 1 - ab_prev
    m2 = a.sqrt() * m1
    cov12, v2 = a.sqrt() * v1, a * v1 + (1 - a)
    cond_mean = m1 + cov12 / v2 * (x_t - m2)
    cond_var = v1 - cov12**2 / v2
    post = q_posterior(S, x0, x_t, _t(t))
    assert torch.allclose(post.mean, cond_mean, rtol=1e-10)
    assert torch.allclose(post.var, cond_var.expand(1, 2), rtol=1e-8)


def test_posterior_log_variance_is_clipped_at_t1():
    x0 = torch.zeros(1, 3)
    post = q_posterior(S, x0, x0, _t(1))
    assert S.beta_tilde[0] == 0  # the true posterior at t = 1 is a point mass
    assert torch.allclose(post.log_var, torch.full((1, 3), S.beta_tilde[1].log().item()))


def test_eq15_inverts_eq4():
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 5, 5, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    t = _t(1, 10, 500, 1000)
    assert torch.allclose(x0_from_eps(S, q_sample(S, x0, t, eps), t, eps), x0, atol=2e-4)


def _true_output(kind, x0, x_t, t, eps):
    return {"eps": eps, "x0": x0, "mu": q_posterior(S, x0, x_t, t).mean}[kind]


@pytest.mark.parametrize("mean_type", ["eps", "x0", "mu"])
def test_every_parameterization_recovers_the_posterior_mean_from_its_true_target(mean_type):
    g = torch.Generator().manual_seed(2)
    x0 = (torch.rand(3, 2, 4, 4, generator=g, dtype=torch.float64) * 2 - 1)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = _t(2, 40, 900)
    x_t = q_sample(S, x0, t, eps)
    out = _true_output(mean_type, x0, x_t, t, eps)
    p = p_mean_var_from_output(S, mean_type, "fixed_beta_tilde", out, x_t, t)
    assert torch.allclose(p.mean, q_posterior(S, x0, x_t, t).mean, atol=1e-9)
    assert torch.allclose(p.pred_x0, x0, atol=1e-8)
    assert torch.allclose(p.pred_eps, eps, atol=1e-6)


def test_eps_mean_is_eq11():
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn(5, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 3, generator=g, dtype=torch.float64)
    t = _t(1, 2, 10, 500, 1000)
    p = p_mean_var_from_output(S, "eps", "fixed_beta", eps, x_t, t)
    a, b, ab = (gather(tab, t, 2, torch.float64) for tab in (S.alphas, S.betas, S.alpha_bar))
    eq11 = (x_t - b / (1 - ab).sqrt() * eps) / a.sqrt()
    assert torch.allclose(p.mean, eq11, rtol=1e-9, atol=1e-10)


def test_variances_fixed_and_learned():
    x_t = torch.zeros(2, 1)
    t = _t(1, 500)
    lv_beta = p_mean_var_from_output(S, "eps", "fixed_beta", torch.zeros(2, 1), x_t, t).log_var
    lv_tilde = p_mean_var_from_output(S, "eps", "fixed_beta_tilde", torch.zeros(2, 1), x_t, t).log_var
    assert lv_beta[1].item() == pytest.approx(math.log(S.betas[499].item()), rel=1e-6)
    assert lv_tilde[1].item() == pytest.approx(math.log(S.beta_tilde[499].item()), rel=1e-6)
    # at t = 1 both use β̃_2, as the official code (σ_1² = β_1 is also ≈ β̃_2)
    assert lv_beta[0].item() == pytest.approx(math.log(S.beta_tilde[1].item()), rel=1e-6)
    out = torch.tensor([[0.0, -3.0], [0.0, -5.0]])
    learned = p_mean_var_from_output(S, "eps", "learned", out, x_t, t).log_var
    assert learned.flatten().tolist() == [-3.0, -5.0]
    for v, ref in ((1.0, lv_beta[1]), (-1.0, lv_tilde[1])):
        out = torch.tensor([[0.0, v], [0.0, v]])
        lr = p_mean_var_from_output(S, "eps", "learned_range", out, x_t, t).log_var
        assert lr[1].item() == pytest.approx(ref.item(), rel=1e-6)


def test_output_with_wrong_channels_is_a_clear_error():
    with pytest.raises(ValueError, match="expected"):
        p_mean_var_from_output(S, "eps", "learned", torch.zeros(2, 3), torch.zeros(2, 3), _t(1, 2))


@pytest.mark.parametrize("var_type", ["fixed_beta", "fixed_beta_tilde"])
def test_bound_term_equals_weighted_mse_of_eq12(var_type):
    """L_{t−1} for the ε-parameterization: KL − KL(ε_θ = ε) = β_t²/(2σ_t² α_t (1 − ᾱ_t)) ‖ε − ε_θ‖² (Eq. 12)."""
    d = GaussianDiffusion(S, "eps", var_type)
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    eps_theta = eps + 0.3 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = _t(2, 3, 10, 100, 600, 1000)
    x_t = q_sample(S, x0, t, eps)

    def term_nats(pred):
        p = p_mean_var_from_output(S, "eps", var_type, pred, x_t, t)
        return d.vlb_term_bpd(p, x0, x_t, t) * math.log(2) * 16  # bits/dim → nats per image

    a, b, ab = (gather(tab, t, 4, torch.float64) for tab in (S.alphas, S.betas, S.alpha_bar))
    sigma2 = torch.exp(p_mean_var_from_output(S, "eps", var_type, eps, x_t, t).log_var)
    weight = b**2 / (2 * sigma2 * a * (1 - ab))
    eq12 = (weight * (eps - eps_theta) ** 2).flatten(1).sum(1)
    assert torch.allclose(term_nats(eps_theta) - term_nats(eps), eq12, rtol=1e-6)


def test_prior_term_is_about_1e5_bits_per_dim():
    """L_T ≈ 10⁻⁵ bits/dim for the linear schedule on data in [-1, 1] (Sec. 4)."""
    d = GaussianDiffusion(S)
    g = torch.Generator().manual_seed(5)
    x0 = torch.rand(64, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    prior = d.prior_bpd(x0)
    ab = S.alpha_bar[-1].item()
    # KL(N(√ᾱ x, 1 − ᾱ) ‖ N(0, 1)) = ½(ᾱx² − ᾱ − log(1 − ᾱ)) ≈ ½ ᾱ x² + ¼ ᾱ²
    approx = (0.5 * ab * x0**2 + 0.25 * ab**2).flatten(1).mean(1) / math.log(2)
    assert torch.allclose(prior, approx, rtol=1e-3)
    assert 3e-6 < prior.mean().item() < 3e-5


def _fixed_model(out):
    return lambda x, step: out


def test_simple_loss_is_eq14_and_t_is_uniform():
    d = GaussianDiffusion(S)
    g = torch.Generator().manual_seed(6)
    x0 = torch.rand(8, 1, 2, 2, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    pred = torch.randn(x0.shape, generator=g)
    t = d.sample_t(8, g)
    terms = d.training_losses(_fixed_model(pred), x0, t, noise)
    assert torch.allclose(terms.loss, ((noise - pred) ** 2).flatten(1).mean(1))
    ts = d.sample_t(50_000, torch.Generator().manual_seed(0))
    assert ts.min() == 1 and ts.max() == T
    counts = torch.bincount(ts, minlength=T + 1)[1:].double()
    chi2 = ((counts - 50) ** 2 / 50).sum().item()
    assert chi2 < 999 + 5 * math.sqrt(2 * 999)  # χ² with 999 degrees of freedom


class _Tiny(torch.nn.Module):
    """A per-pixel linear map of (x_t, t) — enough to check gradients and shapes."""

    def __init__(self, c_out):
        super().__init__()
        self.lin = torch.nn.Conv2d(2, c_out, 1)

    def forward(self, x, step):
        tt = (step.float() / T).reshape(-1, 1, 1, 1).expand_as(x)
        return self.lin(torch.cat([x, tt], 1))


@pytest.mark.parametrize("mean_type,var_type,loss_type", [
    ("eps", "fixed_beta", "simple"), ("eps", "fixed_beta_tilde", "vlb"), ("eps", "learned", "vlb"),
    ("eps", "learned_range", "hybrid"), ("x0", "fixed_beta", "simple"), ("x0", "fixed_beta_tilde", "vlb"),
    ("mu", "fixed_beta", "mu_mse"), ("mu", "learned", "vlb"), ("mu", "fixed_beta_tilde", "vlb"),
])
def test_every_objective_gives_finite_losses_and_gradients(mean_type, var_type, loss_type):
    learned = var_type.startswith("learned")
    d = GaussianDiffusion(S, mean_type, var_type, loss_type)
    net = _Tiny(2 if learned else 1)
    g = torch.Generator().manual_seed(7)
    x0 = torch.round((torch.rand(16, 1, 4, 4, generator=g) * 2 - 1) * 127.5) / 127.5
    t = torch.cat([_t(1, 2, 1000), d.sample_t(13, g)])  # t = 1 exercises the decoder L_0
    terms = d.training_losses(net, x0, t, torch.randn(x0.shape, generator=g))
    assert terms.loss.shape == (16,) and torch.isfinite(terms.loss).all()
    terms.loss.mean().backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in net.parameters())


def test_hybrid_trains_the_mean_only_through_the_mse():
    """In L_simple + λ L_vlb the bound term sees a frozen mean (Nichol & Dhariwal)."""
    g = torch.Generator().manual_seed(8)
    x0 = torch.rand(8, 1, 2, 2, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = _t(1, 2, 3, 50, 100, 500, 900, 1000)
    out = torch.randn(8, 2, 2, 2, generator=g, requires_grad=True)
    hybrid = GaussianDiffusion(S, "eps", "learned_range", "hybrid")
    hybrid.training_losses(_fixed_model(out), x0, t, noise).loss.sum().backward()
    grad_hybrid = out.grad.clone()
    out.grad = None
    mse = ((noise - out[:, :1]) ** 2).flatten(1).mean(1).sum()
    mse.backward()
    assert torch.allclose(grad_hybrid[:, :1], out.grad[:, :1])
    assert grad_hybrid[:, 1:].abs().sum() > 0


def test_bound_sums_its_terms_and_batching_over_t_changes_nothing():
    d = GaussianDiffusion(Schedule.from_betas(make_betas("linear", 40, 1e-3, 0.2)), "eps", "fixed_beta", levels=17)
    net = _Tiny(1).double()
    x0 = torch.round((torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(9)) * 2 - 1) * 8) / 8
    x0 = x0.double()
    a = d.bound(net, x0, GlobalNoise(torch.Generator().manual_seed(10)), t_per_batch=1)
    b = d.bound(net, x0, GlobalNoise(torch.Generator().manual_seed(10)), t_per_batch=7)
    assert a.terms_bpd.shape == (3, 40)
    assert torch.allclose(a.total_bpd, a.prior_bpd + a.terms_bpd.sum(1))
    assert torch.allclose(a.terms_bpd, b.terms_bpd, rtol=1e-10)
    assert (a.terms_bpd[:, 1:] >= 0).all()  # KL terms
    assert (a.terms_bpd[:, 0] > 0).all()  # −log of a probability < 1


def _gaussian_optimal_eps(s: Schedule, m: float, var: float):
    """E[ε | x_t] for data N(m, var·I): Cov(ε, x_t)/Var(x_t)·(x_t − √ᾱ m), exact for every t."""

    def model(x, step):
        ab = s.alpha_bar.to(x.dtype)[step].reshape(-1, *([1] * (x.ndim - 1)))
        return (1 - ab).sqrt() / (ab * var + 1 - ab) * (x - ab.sqrt() * m)

    return model


@pytest.mark.parametrize("var_type", ["fixed_beta", "fixed_beta_tilde"])
def test_optimal_eps_predictor_reproduces_gaussian_data(var_type):
    """Algorithm 2 run with the exact optimal ε for N(m, s²) data gives samples with that mean and variance."""
    from ddpm.sampling import sample

    m, var = 0.3, 0.25
    d = GaussianDiffusion(S, "eps", var_type)
    x = sample(_gaussian_optimal_eps(S, m, var), d, (5_000, 4), GlobalNoise(torch.Generator().manual_seed(11)),
               clip_denoised=False)
    n = x.numel()
    assert x.mean().item() == pytest.approx(m, abs=4 * math.sqrt(var / n))
    assert x.var().item() == pytest.approx(var, abs=4 * var * math.sqrt(2 / n) + 0.005 * var)


def _gaussian_exact_reverse(s: Schedule, m: float, var: float):
    """[E[ε|x_t], log Var(x_{t−1}|x_t)] for N(m, var) data: with (x_{t−1}, x_t) jointly Gaussian, p_θ can be
    the true reverse process exactly (a "learned" Σ)."""
    eps = _gaussian_optimal_eps(s, m, var)

    def model(x, step):
        view = (-1, *([1] * (x.ndim - 1)))
        ab, ab_prev = (tab.to(x.dtype)[step].reshape(view) for tab in (s.alpha_bar, s.alpha_bar_prev))
        v_prev = ab_prev * var + 1 - ab_prev  # Var(x_{t−1}); at t = 1 this is the data variance
        v_t = ab * var + 1 - ab
        a = ab / ab_prev
        cond_var = v_prev - a * v_prev**2 / v_t
        return torch.cat([eps(x, step), cond_var.log().expand_as(x)], dim=1)

    return model


def test_bound_of_optimal_model_is_at_least_and_close_to_the_true_nll():
    """Gaussian data N(m, s²): the bound (continuous decoder at t = 1) against the differential NLL ½ log(2πe s²).

    With p_θ the exact reverse process (optimal ε, learned Σ = the true conditional variance) the bound's
    expectation equals the NLL up to L_T's mismatch (< 1e-4 nats/dim), so the Monte Carlo estimate must agree
    within 4 standard errors + 1e-4. With the same optimal ε but σ_t² fixed to β̃_t the bound is looser (never
    below the NLL): that is the price of a fixed variance, which Sec. 3.2 discusses.
    """
    m, var = -0.2, 0.25
    exact = 0.5 * math.log(2 * math.pi * math.e * var)
    g = torch.Generator().manual_seed(12)
    x0 = m + math.sqrt(var) * torch.randn(512, 4, generator=g, dtype=torch.float64)

    def bound_nats(var_type, model):
        d = GaussianDiffusion(S, "eps", var_type)
        terms = d.bound(model, x0, GlobalNoise(torch.Generator().manual_seed(13)), clip_denoised=False, t_per_batch=250,
                        decoder="continuous")
        nats = terms.total_bpd * math.log(2)
        return nats.mean().item(), nats.std().item() / math.sqrt(nats.numel())

    tight, se = bound_nats("learned", _gaussian_exact_reverse(S, m, var))
    assert abs(tight - exact) < 4 * se + 1e-4, (tight, exact, se)
    loose, se_loose = bound_nats("fixed_beta_tilde", _gaussian_optimal_eps(S, m, var))
    assert loose > exact - 4 * se_loose
    assert loose > tight
