"""How training draws t: the uniform draw of Algorithm 1, and importance sampling from the losses' second moments."""

import numpy as np
import pytest
import torch

from ddpm.config import DiffusionConfig
from ddpm.diffusion import GaussianDiffusion
from ddpm.train.t_sampling import LossSecondMomentSampler, UniformSampler, t_sampler_for


def diffusion(T: int) -> GaussianDiffusion:
    return GaussianDiffusion.from_config(DiffusionConfig(T=T))


def warmed(T: int = 5, seed: int = 0) -> tuple[LossSecondMomentSampler, np.ndarray]:
    """A sampler whose every t has seen 13 losses (so the ring holds the last 10), and those 10 per t."""
    s = LossSecondMomentSampler(diffusion(T))
    rng = np.random.default_rng(seed)
    losses = rng.gamma(2.0, 1.0, size=(13, T)) * np.arange(1, T + 1)  # larger t, larger losses
    for row in losses:
        s.update(torch.arange(1, T + 1), torch.from_numpy(row))
    return s, losses[-10:].T  # (T, 10): what the history must hold


def test_uniform_draws_are_algorithm_1s_with_unit_weights():
    d = diffusion(1000)
    t, w = UniformSampler(d).draw(64, torch.Generator().manual_seed(3))
    assert torch.equal(t, d.sample_t(64, torch.Generator().manual_seed(3))) and torch.equal(w, torch.ones(64))


def test_before_every_t_has_its_history_the_draws_stay_uniform():
    d = diffusion(5)
    s = LossSecondMomentSampler(d)
    for _ in range(9):
        s.update(torch.arange(1, 6), torch.rand(5))
    s.update(torch.arange(1, 5), torch.rand(4))  # t = 5 has 9 losses: not warm yet
    assert not s.warm()
    t, w = s.draw(32, torch.Generator().manual_seed(1))
    assert torch.equal(t, d.sample_t(32, torch.Generator().manual_seed(1))) and torch.equal(w, torch.ones(32))
    s.update(torch.tensor([5]), torch.rand(1))
    assert s.warm()


def test_probabilities_are_the_root_mean_square_of_the_last_ten_losses_mixed_with_uniform():
    s, last = warmed()
    rms = np.sqrt((last ** 2).mean(axis=1))  # computed here from the losses fed in, not from the sampler's ring
    expected = 0.999 * rms / rms.sum() + 0.001 / 5
    np.testing.assert_allclose(s.probabilities(), expected, rtol=1e-12)
    assert s.probabilities().sum() == pytest.approx(1.0, abs=1e-12)


def test_the_weighted_loss_is_unbiased_by_exact_enumeration():
    # E_{t~p}[w_t L_t] over all t, with the weights the sampler hands out, equals the uniform mean (1/T) Σ L_t
    s, _ = warmed(T=7)
    p = s.probabilities()
    big, w = s.draw(20_000, torch.Generator().manual_seed(0))
    weight_of = {}
    for t, wt in zip(big.tolist(), w.tolist()):
        weight_of.setdefault(t, wt)
        assert wt == weight_of[t]  # one weight per t
    assert sorted(weight_of) == list(range(1, 8))
    L = np.random.default_rng(5).uniform(0.1, 4.0, size=7)  # any per-t losses
    expectation = sum(p[t - 1] * weight_of[t] * L[t - 1] for t in range(1, 8))
    assert expectation == pytest.approx(L.mean(), rel=1e-6)  # float32 weights
    # and the draws follow p (20,000 draws: each frequency within 5 standard errors)
    freq = np.bincount(big.numpy() - 1, minlength=7) / len(big)
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / len(big)))


def test_importance_sampling_lowers_the_variance_of_the_bound_estimate():
    # per-t losses whose scale grows with t: the estimate T·w_t·L_t of Σ_t L_t has a smaller variance under p
    s, last = warmed(T=5)
    L = last.mean(axis=1)
    p = s.probabilities()
    uniform_var = (5 * L).var()  # t uniform: the estimate 5·L_t
    importance_var = (p * (L / p) ** 2).sum() - L.sum() ** 2
    assert importance_var < 0.5 * uniform_var


def test_the_ring_keeps_the_last_ten_and_the_state_round_trips():
    s, last = warmed()
    np.testing.assert_allclose(np.sort(s.losses, axis=1), np.sort(last, axis=1))
    assert s.counts.tolist() == [13] * 5
    fresh = LossSecondMomentSampler(diffusion(5))
    fresh.load_state_dict(s.state_dict())
    np.testing.assert_array_equal(fresh.probabilities(), s.probabilities())
    a = s.draw(16, torch.Generator().manual_seed(2))
    b = fresh.draw(16, torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_state_that_does_not_fit_is_refused():
    s, _ = warmed()
    with pytest.raises(ValueError, match="does not fit T=6"):
        LossSecondMomentSampler(diffusion(6)).load_state_dict(s.state_dict())
    bad = s.state_dict()
    bad["losses"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        LossSecondMomentSampler(diffusion(5)).load_state_dict(bad)
    with pytest.raises(ValueError, match="no state"):
        UniformSampler(diffusion(5)).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="unknown t-sampler 'cubic'"):
        t_sampler_for("cubic", diffusion(5))  # type: ignore[arg-type]
