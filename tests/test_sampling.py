"""Algorithm 2, respacing, DDIM, reconstruction from a frozen x_t and interpolation."""

import math

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.rng import GLOBAL_NOISE, GlobalNoise, SharedNoise, per_item
from ddpm.sampling import (
    ancestral_steps,
    ddim_steps,
    interpolate,
    reconstruct_from,
    run,
    sample,
)
from ddpm.schedules import Schedule, make_betas

S = Schedule.from_betas(make_betas("linear", 1000))


def gaussian_optimal_eps(m: float, var: float):
    """E[ε | x_t] for data N(m, var): the exact optimal ε-network; ``step`` is the original chain's 0-indexed step."""

    def model(x, step):
        ab = S.alpha_bar.to(x.dtype)[step].reshape(-1, *([1] * (x.ndim - 1)))
        return (1 - ab).sqrt() / (ab * var + 1 - ab) * (x - ab.sqrt() * m)

    return model


def linear_net(x, step):
    return 0.5 * x + 1e-3 * step.float().reshape(-1, *([1] * (x.ndim - 1)))


@pytest.fixture
def small_diffusion():
    return GaussianDiffusion(Schedule.from_betas(make_betas("linear", 50, 1e-3, 0.2)))


def test_same_seed_same_samples_other_seed_other_samples(small_diffusion):
    a = sample(linear_net, small_diffusion, (3, 1, 4, 4), GlobalNoise(torch.Generator().manual_seed(0)))
    b = sample(linear_net, small_diffusion, (3, 1, 4, 4), GlobalNoise(torch.Generator().manual_seed(0)))
    c = sample(linear_net, small_diffusion, (3, 1, 4, 4), GlobalNoise(torch.Generator().manual_seed(1)))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_per_sample_seeds_make_results_independent_of_batching(small_diffusion):
    whole = sample(linear_net, small_diffusion, (4, 1, 2, 2), per_item(7, "sample", range(4)))
    first = sample(linear_net, small_diffusion, (2, 1, 2, 2), per_item(7, "sample", range(2)))
    second = sample(linear_net, small_diffusion, (2, 1, 2, 2), per_item(7, "sample", range(2, 2 + 2)))
    assert torch.allclose(whole, torch.cat([first, second]), atol=1e-6)


def test_every_step_is_observable_and_the_last_returns_the_mean(small_diffusion):
    d = small_diffusion
    x_T = GlobalNoise(torch.Generator().manual_seed(0)).randn((2, 1, 3, 3))
    steps = list(ancestral_steps(linear_net, d, x_T, GlobalNoise(torch.Generator().manual_seed(1))))
    assert [s.t for s in steps] == list(range(50, 0, -1))
    assert all(s.pred_x0.abs().max() <= 1 for s in steps)  # clipped x̂₀
    x1 = steps[-2].x
    mean = d.p_mean_var(linear_net, x1, torch.ones(2, dtype=torch.long), clip_denoised=True).mean
    assert torch.equal(steps[-1].x, mean)  # Algorithm 2 returns μ_θ(x_1, 1) without noise


def test_unclipped_sampling_is_allowed(small_diffusion):
    x_T = 5 * torch.ones(1, 1, 2, 2)
    last = list(ancestral_steps(lambda x, s: torch.zeros_like(x), small_diffusion, x_T, GLOBAL_NOISE,
                                clip_denoised=False))
    assert last[0].pred_x0.max() > 1


def affine_prediction(m: float, var: float, t: int, steps: list[int], sampler: str, eta: float):
    """Moments after one step, derived by hand: with the optimal ε every update is affine in x, x' = A x + b + σ z."""
    k = steps.index(t)
    a = S.alpha_bar[t - 1].item()
    a_prev = S.alpha_bar[steps[k - 1] - 1].item() if k > 0 else 1.0
    c = math.sqrt(1 - a) / (a * var + 1 - a)                       # ε̂ = c (x − √a m)
    px, pb = (1 - math.sqrt(1 - a) * c) / math.sqrt(a), math.sqrt(1 - a) * c * m
    ex, eb = c, -c * math.sqrt(a) * m                              # ε̂ = ex x + eb, x̂₀ = px x + pb
    if sampler == "ddim":
        sigma2 = eta**2 * (1 - a_prev) / (1 - a) * (1 - a / a_prev) if k > 0 else 0.0
        d = math.sqrt(max(1 - a_prev - sigma2, 0.0))
        return math.sqrt(a_prev) * px + d * ex, math.sqrt(a_prev) * pb + d * eb, sigma2
    beta = 1 - a / a_prev                                          # the respaced chain's β and β̃
    coef_x0, coef_xt = math.sqrt(a_prev) * beta / (1 - a), math.sqrt(1 - beta) * (1 - a_prev) / (1 - a)
    sigma2 = (1 - a_prev) / (1 - a) * beta if k > 0 else 0.0
    return coef_x0 * px + coef_xt, coef_x0 * pb, sigma2


@pytest.mark.parametrize("sampler,steps,eta", [("ancestral", 100, 0.0), ("ancestral", 20, 0.0), ("ddim", 10, 0.0),
                                                ("ddim", 50, 0.0), ("ddim", 100, 1.0)])
def test_fast_samplers_match_hand_derived_moments_on_gaussian_data(sampler, steps, eta):
    """Respaced ancestral and DDIM sampling with the exact optimal ε for N(m, s²) data.

    Every step is then affine in x, so the samples' mean and variance follow from propagating N(0, 1) through
    the hand-derived maps; few steps shrink the variance (a real discretization error, not sampling noise).
    """
    from ddpm.schedules import spaced_steps

    m, var = 0.3, 0.25
    d = GaussianDiffusion(S, "eps", "fixed_beta_tilde")
    x = sample(gaussian_optimal_eps(m, var), d, (4000, 4), GlobalNoise(torch.Generator().manual_seed(3)),
               sampler=sampler, steps=steps, eta=eta, clip_denoised=False)
    kept = spaced_steps(1000, steps)
    mean_ref, var_ref = 0.0, 1.0
    for t in reversed(kept):
        A, b, sigma2 = affine_prediction(m, var, t, kept, sampler, eta)
        mean_ref, var_ref = A * mean_ref + b, A * A * var_ref + sigma2
    n = x.numel()
    assert x.mean().item() == pytest.approx(mean_ref, abs=4 * math.sqrt(var_ref / n))
    assert x.var().item() == pytest.approx(var_ref, abs=4 * var_ref * math.sqrt(2 / n))
    if steps >= 100:
        assert var_ref == pytest.approx(var, rel=0.15)  # and with enough steps, close to the data's


def test_ddim_with_eta_zero_is_deterministic_given_x_T():
    d = GaussianDiffusion(S).respaced([1, 250, 500, 750, 1000])
    x_T = GlobalNoise(torch.Generator().manual_seed(0)).randn((2, 3))
    a = run(ddim_steps(gaussian_optimal_eps(0.0, 0.5), d, x_T, GlobalNoise(torch.Generator().manual_seed(1))))
    b = run(ddim_steps(gaussian_optimal_eps(0.0, 0.5), d, x_T, GlobalNoise(torch.Generator().manual_seed(2))))
    assert torch.equal(a, b)


def test_respaced_chain_feeds_the_network_the_original_steps():
    seen = []

    def spy(x, step):
        seen.append(step[0].item())
        return torch.zeros_like(x)

    d = GaussianDiffusion(S).respaced([1, 500, 1000])
    sample(spy, d, (1, 2), GlobalNoise(torch.Generator().manual_seed(0)))
    assert seen == [999, 499, 0]


def test_reconstructions_share_one_frozen_x_t(small_diffusion):
    x0 = torch.zeros(1, 1, 4, 4)
    x_t, recs = reconstruct_from(linear_net, small_diffusion, x0, t=25, n=5,
                                 noise=GlobalNoise(torch.Generator().manual_seed(0)))
    assert x_t.shape == (1, 1, 4, 4) and recs.shape == (5, 1, 4, 4)
    assert not torch.allclose(recs[0], recs[1])  # different reverse noise, same x_t
    with pytest.raises(ValueError, match="t must be"):
        reconstruct_from(linear_net, small_diffusion, x0, t=51, n=2)


def test_interpolation_endpoints_decode_each_image(small_diffusion):
    d = small_diffusion
    a, b = -0.5 * torch.ones(1, 1, 2, 2), 0.5 * torch.ones(1, 1, 2, 2)
    lambdas = [0.0, 0.5, 1.0]
    out = interpolate(linear_net, d, a, b, t=20, lambdas=lambdas, noise=GlobalNoise(torch.Generator().manual_seed(4)))
    assert out.shape == (3, 1, 2, 2)
    # endpoint λ = 0 equals decoding x_a's encoding alone with the same noise stream
    g = torch.Generator().manual_seed(4)
    noise = GlobalNoise(g).randn((1, 1, 2, 2))
    x_t_a = d.q_sample(a, torch.tensor([20]), noise)
    alone = run(ancestral_steps(linear_net, d, x_t_a, SharedNoise(GlobalNoise(g)), True, t_start=20))
    assert torch.allclose(out[0], alone[0], atol=1e-6)
    assert out[0].mean() < out[1].mean() < out[2].mean()


def test_unknown_sampler_is_an_error(small_diffusion):
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(linear_net, small_diffusion, (1, 2), sampler="euler")  # type: ignore[arg-type]


# --- one registry, one respacing rule (issue #18, item 1) ------------------------------------------------

def test_spacings_share_one_rounding_rule_and_span_the_chain():
    from ddpm.schedules import spaced_steps

    T, K = 1000, 20
    assert spaced_steps(T, K) == [1 + (i * (T - 1)) // (K - 1) for i in range(K)]  # uniform: today's steps
    quad = spaced_steps(T, K, "quadratic")
    assert quad[:4] == [1, 3, 12, 25] and quad[-1] == T  # 1 + ⌊999 (i/19)²⌋, dense at small t
    log = spaced_steps(T, K, "logsnr", S.alpha_bar)
    lam = 0.5 * torch.log(S.alpha_bar / (1 - S.alpha_bar))
    gaps = -torch.diff(lam[torch.tensor(log) - 1])
    assert log[0] == 1 and log[-1] == T and gaps.max() < 1.6 * gaps.min()  # even in λ up to integer rounding
    for steps in (quad, log, spaced_steps(30, 29, "quadratic"), spaced_steps(30, 29, "logsnr", S.alpha_bar[:30])):
        assert steps == sorted(set(steps)) and 1 <= steps[0] and steps[-1] <= T  # duplicates pushed up, distinct


def test_bad_spacings_and_step_counts_are_refused():
    from ddpm.config import ConfigError
    from ddpm.schedules import spaced_steps

    with pytest.raises(ConfigError, match=r"^unknown spacing 'cubic'; expected one of uniform, quadratic, logsnr$"):
        GaussianDiffusion(S).with_steps(10, "cubic")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^steps must be in 1..1000, got 1001$"):
        GaussianDiffusion(S).with_steps(1001)
    with pytest.raises(ConfigError, match=r"^steps must be in 1..1000, got 2.5$"):
        spaced_steps(1000, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^spacing 'logsnr' needs the schedule's"):
        spaced_steps(1000, 10, "logsnr")


def test_with_steps_is_the_one_respacing_entry_point():
    from ddpm.schedules import spaced_steps

    d = GaussianDiffusion(S)
    assert d.with_steps(None) is d and d.with_steps(1000, "logsnr") is d  # all T steps: the chain itself
    for spacing in ("uniform", "quadratic", "logsnr"):
        r = d.with_steps(25, spacing)
        expected = spaced_steps(1000, 25, spacing, S.alpha_bar)
        assert r.T == 25 and r.schedule.timesteps.tolist() == [t - 1 for t in expected]


def test_every_registered_sampler_has_one_signature_and_can_start_from_t_start():
    from ddpm.sampling import SAMPLERS, sampler_help

    d = GaussianDiffusion(S).with_steps(12)
    x = GlobalNoise(torch.Generator().manual_seed(0)).randn((2, 3))
    from ddpm.sampling.analytic import AnalyticDiffusion

    plain = d
    for name, info in SAMPLERS.items():
        d = AnalyticDiffusion(plain, torch.full((S.T,), 0.5)) if info.needs_gamma else plain  # Γ: Analytic-DPM
        steps = list(info.steps(linear_net, d, x, per_item(0, "sample", range(2)), True, 5))
        assert [s.t for s in steps] == [5, 4, 3, 2, 1], name
        assert steps[-1].x.shape == x.shape and torch.isfinite(steps[-1].x).all(), name
        assert name in sampler_help() and "\n" not in info.description
        again = run(info.steps(linear_net, d, x, per_item(0, "sample", range(2)), True))
        other = run(info.steps(linear_net, d, x, per_item(1, "sample", range(2)), True))
        assert torch.equal(again, run(info.steps(linear_net, d, x, per_item(0, "sample", range(2)), True)))
        assert torch.equal(again, other) != info.stochastic, name  # stochastic ⇔ the seed matters given x_T


def test_sample_refuses_bad_names_eta_and_t_start(small_diffusion):
    from ddpm.config import ConfigError

    with pytest.raises(ConfigError, match=r"^unknown sampler 'euler'; expected one of ancestral, ddim, dpm\+\+2m, "
                                          r"dpm\+\+3m, dpm\+\+3m-taylor, sde-dpm\+\+2m, analytic-ddpm, analytic-ddim$"):
        sample(linear_net, small_diffusion, (1, 2), sampler="euler")
    with pytest.raises(ConfigError, match=r"^eta applies to ddim only, not to sampler 'dpm\+\+2m'; got eta=0.5$"):
        sample(linear_net, small_diffusion, (1, 2), sampler="dpm++2m", eta=0.5)
    with pytest.raises(ConfigError, match=r"^eta must be a finite number >= 0, got nan$"):
        sample(linear_net, small_diffusion, (1, 2), sampler="ddim", eta=float("nan"))
    with pytest.raises(ConfigError, match=r"^t_start must be an integer in 1..50 \(a time of this chain\), got 0$"):
        next(ancestral_steps(linear_net, small_diffusion, torch.zeros(1, 2), GLOBAL_NOISE, True, t_start=0))


def test_dpm_solver_through_sample_with_few_steps_is_close_to_ddim_with_many():
    """On Gaussian data with the exact ε, 10 steps of DPM-Solver++(2M) land nearer the 1000-step DDIM result
    (the probability-flow ODE solved finely) than 10 DDIM steps do."""
    d = GaussianDiffusion(S, "eps", "fixed_beta_tilde")
    model = gaussian_optimal_eps(0.3, 0.25)

    def draw(sampler, steps, spacing="uniform"):
        return sample(model, d, (64, 2), GlobalNoise(torch.Generator().manual_seed(0)), sampler=sampler, steps=steps,
                      clip_denoised=False, spacing=spacing)

    fine = draw("ddim", None)
    err_ddim = (draw("ddim", 10, "logsnr") - fine).abs().max()
    err_dpm = (draw("dpm++2m", 10, "logsnr") - fine).abs().max()
    assert err_dpm < err_ddim / 3, (err_dpm, err_ddim)
