"""β schedules and derived tables, each checked against its defining formula."""

import math

import pytest
import torch

from ddpm.config import ConfigError
from ddpm.schedules import Schedule, gather, make_betas, spaced_steps


def test_linear_schedule_is_the_papers():
    b = make_betas("linear", 1000)
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    assert torch.allclose(b[1:] - b[:-1], torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))


def test_quadratic_constant_and_cosine():
    q = make_betas("quadratic", 50, 1e-4, 0.02)
    assert torch.allclose(q.sqrt(), torch.linspace(0.01, math.sqrt(0.02), 50, dtype=torch.float64))
    c = make_betas("constant", 10, beta_end=0.05)
    assert torch.all(c == 0.05)
    T = 1000
    cos = Schedule.from_betas(make_betas("cosine", T))
    f = [math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(T + 1)]
    expected = torch.tensor([f[t] / f[0] for t in range(1, T + 1)], dtype=torch.float64)
    unclipped = cos.betas < 0.999
    # where β is not clipped at 0.999 the cumulative product follows f(t)/f(0)
    k = int(unclipped.long().cumprod(0).sum())
    assert torch.allclose(cos.alpha_bar[:k], expected[:k], rtol=1e-10)


def test_derived_tables_match_their_definitions():
    s = Schedule.from_betas(make_betas("linear", 100, 1e-3, 0.05))
    b = s.betas
    ab = torch.cumprod(1 - b, 0)
    assert torch.allclose(s.alpha_bar, ab)
    assert s.alpha_bar_prev[0] == 1 and torch.allclose(s.alpha_bar_prev[1:], ab[:-1])
    bt = b * (1 - s.alpha_bar_prev) / (1 - ab)
    assert torch.allclose(s.beta_tilde, bt)
    assert s.beta_tilde[0] == 0
    assert torch.allclose(s.beta_tilde_log_clipped[1:], bt[1:].log())
    assert s.beta_tilde_log_clipped[0] == bt[1].log()
    assert torch.allclose(s.beta_log, b.log())
    assert torch.allclose(s.beta_log_clipped[1:], b[1:].log()) and s.beta_log_clipped[0] == bt[1].log()
    assert torch.allclose(s.posterior_coef_x0, s.alpha_bar_prev.sqrt() * b / (1 - ab))
    assert torch.allclose(s.posterior_coef_xt, (1 - b).sqrt() * (1 - s.alpha_bar_prev) / (1 - ab))
    assert torch.allclose(s.sqrt_recip_alpha_bar * s.sqrt_alpha_bar, torch.ones_like(ab))
    assert all(getattr(s, name).dtype == torch.float64 for name in ("betas", "alpha_bar", "beta_tilde"))


@pytest.mark.parametrize("betas", [[0.0, 0.1], [0.1, 1.0], [0.5, 1.5], [-0.1], [float("nan")], []])
def test_betas_outside_unit_interval_are_refused(betas):
    with pytest.raises(ConfigError, match="β|betas"):
        Schedule.from_betas(betas)


def test_bad_T_and_unknown_schedule():
    with pytest.raises(ConfigError, match="T"):
        make_betas("linear", 0)
    with pytest.raises(ConfigError, match="unknown schedule"):
        make_betas("sigmoid", 10)  # type: ignore[arg-type]


def test_alpha_bar_that_stops_decreasing_is_refused():
    # ᾱ underflows to 0 and then no longer decreases
    with pytest.raises(ConfigError, match="decreasing"):
        Schedule.from_betas(torch.full((2000,), 0.9999, dtype=torch.float64))


def test_alpha_bar_too_small_for_float32_is_refused():
    with pytest.raises(ConfigError, match="overflow float32"):
        Schedule.from_betas(torch.full((200,), 0.5, dtype=torch.float64))  # ᾱ_T = 2⁻²⁰⁰


def test_gather_reads_entry_t_minus_one():
    table = torch.arange(10, dtype=torch.float64) * 10
    out = gather(table, torch.tensor([1, 10, 5]), ndim=4)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float32
    assert out.flatten().tolist() == [0.0, 90.0, 40.0]


def test_respacing_keeps_alpha_bar_at_the_kept_steps():
    s = Schedule.from_betas(make_betas("linear", 1000))
    steps = spaced_steps(1000, 50)
    r = s.respace(steps)
    assert r.T == 50
    assert torch.allclose(r.alpha_bar, s.alpha_bar[torch.tensor(steps) - 1], rtol=1e-12)
    assert r.timesteps.tolist() == [k - 1 for k in steps]
    full = s.respace(range(1, 1001))
    assert torch.allclose(full.betas, s.betas, rtol=1e-9)


@pytest.mark.parametrize("T,K", [(1000, 1), (1000, 10), (1000, 999), (1000, 1000), (7, 3)])
def test_spaced_steps(T, K):
    steps = spaced_steps(T, K)
    assert len(steps) == K == len(set(steps))
    assert steps[-1] == T and steps == sorted(steps) and steps[0] >= 1
    with pytest.raises(ConfigError):
        spaced_steps(T, T + 1)
