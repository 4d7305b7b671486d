"""DPM-Solver++ (2M, 3M, SDE-2M): convergence order against the exact probability-flow solution of Gaussian
data, step-by-step equality with diffusers' DPMSolverMultistepScheduler, and the SDE's marginal."""

import math

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.rng import GLOBAL_NOISE, GlobalNoise, per_item
from ddpm.sampling import SAMPLERS, dpm_solver_steps, run
from ddpm.schedules import Schedule, make_betas

M, S_DATA = 0.3, 0.5  # data x_0 ~ N(m, s² I)


def lambda_linear_schedule(T: int, lam_1: float = 3.0, lam_T: float = -3.0) -> Schedule:
    """A chain with λ_t = log(α_t/σ_t) linear in t, so uniformly spaced steps have exactly equal h."""
    alpha_bar = torch.sigmoid(2 * torch.linspace(lam_1, lam_T, T, dtype=torch.float64))  # ᾱ = α²/(α² + σ²)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    return Schedule.from_betas(1 - alpha_bar / prev)


def optimal_eps(s: Schedule, m: float = M, var: float = S_DATA**2):
    """E[ε | x_t] for data N(m, var) on the chain ``s``: the exact ε-network (``step`` 0-indexed)."""

    def model(x, step):
        ab = s.alpha_bar.to(x.dtype)[step].reshape(-1, *([1] * (x.ndim - 1)))
        return (1 - ab).sqrt() / (ab * var + 1 - ab) * (x - ab.sqrt() * m)

    return model


def exact_flow(s: Schedule, t_from: int, t_to: int, x: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE's solution for N(m, s²) data: x_t = α_t m + v_t z with v_t² = α_t² s² + σ_t².

    The flow maps each quantile z of the marginal N(α_t m, v_t²) to itself, so x ↦ α_to m + (v_to/v_from)(x − α_from m).
    """
    a0, a1 = s.sqrt_alpha_bar[t_from - 1].item(), s.sqrt_alpha_bar[t_to - 1].item()
    v0, v1 = math.sqrt(a0**2 * S_DATA**2 + 1 - a0**2), math.sqrt(a1**2 * S_DATA**2 + 1 - a1**2)
    return a1 * M + v1 / v0 * (x - a0 * M)


def error_at_t1(s: Schedule, n_intervals: int, order: int, third_order: str = "reference",
                short_start: bool = False) -> float:
    """Max error at paper time 1 of the original chain, after n_intervals equal steps in λ from t = T.

    We compare at t = 1 (the last state before the final jump to σ = 0, which lands on x̂₀ and is not an ODE
    step). ``short_start`` adds two tiny first steps, so the lower-order start-up steps cost nothing.
    """
    T = s.T
    steps = {1 + i * (T - 1) // n_intervals for i in range(n_intervals + 1)}
    if short_start:
        steps |= {T - 1, T - 2}
    d = GaussianDiffusion(s).respaced(sorted(steps))
    x_T = torch.linspace(-3, 3, 7, dtype=torch.float64).reshape(7, 1)
    out = list(dpm_solver_steps(optimal_eps(s), d, x_T, GLOBAL_NOISE, False, order=order, third_order=third_order))
    assert out[-2].t == 2 and len(out) == len(steps)
    return (out[-2].x - exact_flow(s, T, 1, x_T)).abs().max().item()


def ratios(errors: list[float]) -> list[float]:
    return [a / b for a, b in zip(errors, errors[1:])]


def test_2m_error_falls_at_second_order():
    s = lambda_linear_schedule(1025)
    errs = [error_at_t1(s, n, order=2) for n in (32, 64, 128)]
    assert all(3.0 < r < 5.5 for r in ratios(errs)), (errs, ratios(errs))
    first = [error_at_t1(s, n, order=1) for n in (32, 64)]  # DDIM-like first order halves only
    assert 1.5 < ratios(first)[0] < 2.5 and errs[0] < first[0] / 10


def test_3m_reference_form_is_second_order_but_more_accurate_than_2m():
    """The 3M of Lu's code, diffusers and k-diffusion weights D2 ≈ h² x̂₀''/2 as if it were h² x̂₀'': globally
    second order (ratio ≈ 4, measured 4.45, 4.16), though below 2M's error at every step count."""
    s = lambda_linear_schedule(1025)
    errs = [error_at_t1(s, n, order=3) for n in (32, 64, 128)]
    assert all(3.0 < r < 5.5 for r in ratios(errs)), (errs, ratios(errs))
    assert all(e3 < e2 / 2 for e3, e2 in zip(errs, [error_at_t1(s, n, order=2) for n in (32, 64, 128)]))


def test_3m_taylor_form_is_third_order():
    """With D2 doubled (the Taylor term) and the start-up steps made short, halving h divides the error by ≈ 8
    (measured 9.5, 8.9 at 128 → 256 → 512 steps)."""
    s = lambda_linear_schedule(8193)
    errs = [error_at_t1(s, n, order=3, third_order="taylor", short_start=True) for n in (128, 256, 512)]
    assert all(5.5 < r < 11 for r in ratios(errs)), (errs, ratios(errs))


def test_the_registered_3m_samplers_are_the_two_forms():
    """`--sampler dpm++3m` is the reference (diffusers') form, `--sampler dpm++3m-taylor` the third-order one."""
    s = lambda_linear_schedule(257)
    d = GaussianDiffusion(s).with_steps(16)
    x_T = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name, form in (("dpm++3m", "reference"), ("dpm++3m-taylor", "taylor")):
        got = [st.x for st in SAMPLERS[name].steps(optimal_eps(s), d, x_T, GLOBAL_NOISE, False)]
        want = [st.x for st in dpm_solver_steps(optimal_eps(s), d, x_T, GLOBAL_NOISE, False, order=3,
                                                third_order=form)]
        assert all(torch.equal(a, b) for a, b in zip(got, want)) and len(got) == len(want) == 16
    assert not torch.equal(got[-1], [st.x for st in SAMPLERS["dpm++3m"].steps(optimal_eps(s), d, x_T,
                                                                                GLOBAL_NOISE, False)][-1])


# --- equality with diffusers -------------------------------------------------------------------------------

def dummy_model(C: int = 4):
    """A deterministic ε-network: a fixed random linear map of x_t plus a smooth function of the step.

    Near ε ≈ x_t (data of small spread), so trajectories stay O(1) and float32 rounding stays far below 1e-5.
    """
    W = torch.eye(C) * 0.9 + torch.randn(C, C, generator=torch.Generator().manual_seed(0)) * 0.05

    def model(x, step):
        step = torch.as_tensor(step).reshape(-1).expand(x.shape[0]).float()
        return x @ W.T + 0.1 * torch.cos(step / 300)[:, None]

    return model


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("K", [10, 20])
def test_trajectory_equals_diffusers_dpmsolver_plus_plus(order, K):
    diffusers = pytest.importorskip("diffusers")
    T = 1000
    betas = make_betas("linear", T)
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, trained_betas=betas.float().numpy(),
                                                  algorithm_type="dpmsolver++", solver_order=order,
                                                  lower_order_final=True, final_sigmas_type="zero")
    sched.set_timesteps(K)
    ts = sched.timesteps.tolist()                          # 0-indexed steps of the original chain, descending
    d = GaussianDiffusion(Schedule.from_betas(betas)).respaced([t + 1 for t in ts])  # paper time = step + 1
    model = dummy_model()
    x_T = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    ours = [st.x for st in dpm_solver_steps(model, d, x_T, GLOBAL_NOISE, False, order=order)]
    theirs, x = [], x_T.clone()
    for t in ts:
        x = sched.step(model(x, t), t, x).prev_sample
        theirs.append(x)
    assert len(ours) == len(theirs) == K
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    if order == 3:  # and the comparison can tell: the Taylor D2 is visibly another trajectory
        other = run(dpm_solver_steps(model, d, x_T, GLOBAL_NOISE, False, order=3, third_order="taylor"))
        assert (other - theirs[-1]).abs().max() > 1e-4


# --- the SDE variant ----------------------------------------------------------------------------------------

def test_sde_2m_is_deterministic_given_seeds_and_differs_across_seeds():
    d = GaussianDiffusion(Schedule.from_betas(make_betas("linear", 100))).with_steps(10)
    x_T = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    step = SAMPLERS["sde-dpm++2m"].steps
    a = run(step(dummy_model(3), d, x_T, per_item(5, "sample", range(4)), False))
    b = run(step(dummy_model(3), d, x_T, per_item(5, "sample", range(4)), False))
    c = run(step(dummy_model(3), d, x_T, per_item(6, "sample", range(4)), False))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    ode = run(SAMPLERS["dpm++2m"].steps(dummy_model(3), d, x_T, per_item(5, "sample", range(4)), False))
    assert not torch.allclose(a, ode)


def test_sde_2m_matches_the_exact_marginal_on_gaussian_data():
    """x at paper time 1 (before the final jump to x̂₀) must be distributed as q(x_1) = N(α_1 m, α_1² s² + σ_1²)."""
    s = Schedule.from_betas(make_betas("linear", 1000))
    d = GaussianDiffusion(s).with_steps(50, "logsnr")
    n = 20_000
    x_T = torch.randn(n, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    noise = GlobalNoise(torch.Generator().manual_seed(3))
    out = list(SAMPLERS["sde-dpm++2m"].steps(optimal_eps(s), d, x_T, noise, False))
    x1 = out[-2].x
    a1 = s.sqrt_alpha_bar[0].item()
    mean_ref, var_ref = a1 * M, a1**2 * S_DATA**2 + 1 - a1**2
    assert x1.mean().item() == pytest.approx(mean_ref, abs=4 * math.sqrt(var_ref / n))
    assert x1.var().item() == pytest.approx(var_ref, abs=4 * var_ref * math.sqrt(2 / n) + 0.01 * var_ref)
    x0 = out[-1].x  # the last step returns x̂₀(x_1); σ_1 = 0.01, so its law is within 1% of N(m, s²)
    assert x0.mean().item() == pytest.approx(M, abs=4 * S_DATA / math.sqrt(n))
    assert x0.var().item() == pytest.approx(S_DATA**2, rel=4 * math.sqrt(2 / n) + 0.01)
