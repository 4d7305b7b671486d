"""Likelihood-first training as Nichol & Dhariwal (2021) do it here, checked against independent derivations.

The journey: L_vlb (or hybrid) with a learned-range Σ, t drawn by importance from the losses' second moments,
the cosine schedule; then the full bound, its terms, rate–distortion and a kill/resume of such a run. Each
check recomputes its quantity another way (every t enumerated, the KL written out from Eqs. 7 and 11, the
trainer's weighted loss) rather than trusting the function under test.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest
import torch

from ddpm.checkpoint import load_checkpoint
from ddpm.config import ConfigError, override, preset
from ddpm.diffusion import GaussianDiffusion, reverse_log_variance
from ddpm.evaluation.analytic_variance import DEFAULT_IMAGES
from ddpm.evaluation.nll import bound_totals
from ddpm.evaluation.rate_distortion import rate_distortion
from ddpm.schedules import Schedule, make_betas
from ddpm.train import train
from ddpm.train.t_sampling import LossSecondMomentSampler

REPO = Path(__file__).resolve().parents[1]
T = 8
S = Schedule.from_betas(make_betas("cosine", T))  # β_T clipped at 0.999, as Nichol & Dhariwal


class FixedNoise:
    """The same ε for every t, so that the bound's terms and the per-t training losses see one x_t each."""

    def __init__(self, eps: torch.Tensor) -> None:
        self.eps = eps

    def randn(self, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
        assert tuple(shape) == tuple(self.eps.shape)
        return self.eps.clone()


def _data(B: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.round((torch.rand(B, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1) * 8) / 8  # 17 levels
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    w = torch.randn(2, generator=g, dtype=torch.float64)
    return x0, eps, w


def _model(w: torch.Tensor):
    """A smooth stand-in for a learned-range network: an ε channel and a v channel in (-1, 1)."""
    def model(x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        s = (step.double() + 1).reshape(-1, 1, 1, 1) / T
        return torch.cat([0.7 * x + 0.1 * s, torch.tanh(w[0] * x + w[1] * s)], 1)
    return model


def test_the_importance_weighted_vlb_loss_is_unbiased_for_the_bound_by_enumerating_every_t():
    x0, eps, w = _data()
    model = _model(w)
    d = GaussianDiffusion(S, "eps", "learned_range", "vlb", levels=17)
    # the training loss at every t with the same ε ...
    L = torch.stack([d.training_losses(model, x0, torch.full((3,), t), eps).loss for t in range(1, T + 1)], 1)
    # ... is term t − 1 of the bound (Eq. 5), which adds L_T to their sum
    b = d.bound(model, x0, FixedNoise(eps), clip_denoised=False)
    torch.testing.assert_close(b.terms_bpd, L, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(b.total_bpd, b.prior_bpd + L.sum(1), rtol=1e-12, atol=0)
    # a warm importance sampler far from uniform: E_{t~p}[w_t L_t] over all t = (bound − L_T)/T, per example
    sampler = LossSecondMomentSampler(d)
    for k in range(10):
        sampler.update(torch.arange(1, T + 1).repeat(3), L.T.reshape(-1) * (1 + 0.1 * k))
    p = sampler.probabilities()
    assert p.max() > 3 / T  # not uniform
    t, weights = sampler.draw(4000, torch.Generator().manual_seed(0))
    weight_of = dict(zip(t.tolist(), weights.tolist()))
    assert sorted(weight_of) == list(range(1, T + 1))
    expectation = sum(p[k - 1] * weight_of[k] * L[:, k - 1] for k in range(1, T + 1))
    torch.testing.assert_close(T * expectation, b.total_bpd - b.prior_bpd, rtol=1e-6, atol=0)  # float32 weights


def test_learned_range_and_its_bound_term_from_first_principles_on_the_cosine_schedule():
    # v = −1, 0, 1: log β̃_t, the geometric mean, log β_t (β̃_1 = 0 is replaced by β̃_2 at t = 1)
    t = torch.arange(1, T + 1)
    beta_tilde = torch.cat([S.beta_tilde[1:2], S.beta_tilde[1:]])
    for v, ref in ((-1.0, beta_tilde.log()), (0.0, 0.5 * (S.betas.log() + beta_tilde.log())), (1.0, S.betas.log())):
        out = torch.full((T, 1), v, dtype=torch.float64)
        torch.testing.assert_close(reverse_log_variance(S, "learned_range", out, t, out).flatten(), ref)
    # L_{t−1} = KL(q(x_{t−1}|x_t, x_0) ‖ p_θ) with μ̃ of Eq. 7, μ_θ of Eq. 11, tables rebuilt here from β
    x0, eps, w = _data(seed=4)
    model = _model(w)
    d = GaussianDiffusion(S, "eps", "learned_range", "vlb", levels=17)
    ab = torch.cumprod(1 - S.betas, 0)
    for t0 in (2, 5, T):
        a, a_prev, beta = ab[t0 - 1], ab[t0 - 2], S.betas[t0 - 1]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        bt = (1 - a_prev) / (1 - a) * beta
        mu_q = a_prev.sqrt() * beta / (1 - a) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a) * x_t
        out = model(x_t, torch.full((3,), t0 - 1))
        mu_p = (x_t - beta / (1 - a).sqrt() * out[:, :1]) / (1 - beta).sqrt()
        log_var = (out[:, 1:] + 1) / 2 * beta.log() + (1 - out[:, 1:]) / 2 * bt.log()
        kl = 0.5 * (log_var - bt.log() + bt / log_var.exp() + (mu_q - mu_p) ** 2 / log_var.exp() - 1)
        loss = d.training_losses(model, x0, torch.full((3,), t0), eps).loss
        torch.testing.assert_close(loss, kl.flatten(1).mean(1) / math.log(2), rtol=1e-10, atol=1e-12)


# a tiny U-Net on the digits; T = 4 so that every t has its 10 losses after a few steps of 16 images
TINY = dict(base_channels=16, channel_mults=[1, 2], attn_resolutions=[4], num_groups=8, batch_size=16,
            warmup_steps=2, sample_every=0, ema_decay=0.9, schedule="cosine", T=4, loss_type="vlb",
            var_type="learned_range", t_sampler="loss-second-moment", dropout=0.1)


def test_a_stopped_and_resumed_likelihood_first_run_is_the_uninterrupted_one_bit_for_bit(tmp_path):
    cfg = override(preset("digits"), **TINY, total_steps=8, checkpoint_every=4, log_every=3)
    full = train(cfg, tmp_path / "full", progress=False)
    first = train(override(cfg, total_steps=5), tmp_path / "split", progress=False)  # stops between log rows
    state = load_checkpoint(tmp_path / "split").tensors
    assert (state["t_sampler.counts"] >= 10).all()  # the resumed steps draw by importance from the saved history
    rest = train(cfg, tmp_path / "split", resume=True, progress=False)
    assert first.losses + rest.losses == full.losses
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "split")
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    assert all(torch.equal(a.ema[k], b.ema[k]) for k in a.ema)
    assert a.tensors.keys() == b.tensors.keys() and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    keep = ("step", "loss", "loss_t_q1", "loss_t_q2", "loss_t_q3", "loss_t_q4", "grad_norm", "lr")
    rows = []
    for run in ("full", "split"):
        with open(tmp_path / run / "log.csv", newline="") as f:
            rows.append([tuple(r[k] for k in keep) for r in csv.DictReader(f)])
    assert rows[0] == rows[1] and [r[0] for r in rows[0]] == ["3", "6", "8"]


def test_the_logged_loss_of_an_importance_sampled_run_is_the_objective_it_minimises(tmp_path):
    cfg = override(preset("digits"), **TINY, total_steps=8, checkpoint_every=8, log_every=2)
    result = train(cfg, tmp_path / "run", progress=False)
    assert (load_checkpoint(tmp_path / "run").tensors["t_sampler.counts"] >= 10).all()
    with open(tmp_path / "run" / "log.csv", newline="") as f:
        rows = {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}
    # one process: the window's mean of w·L is the mean of the steps' weighted losses (what is minimised)
    assert rows[8] == pytest.approx(sum(result.losses[6:8]) / 2, rel=1e-5)


def test_a_hybrid_lambda_that_the_loss_does_not_use_is_refused():
    with pytest.raises(ConfigError, match="hybrid_lambda"):
        override(preset("digits"), loss_type="vlb", var_type="learned_range", hybrid_lambda=0.01)


def test_rate_distortion_takes_the_decoder_the_command_chooses_for_continuous_points():
    # 2-D points (toy2d-like, not on any grid): `ddpm rate-distortion` uses the Gaussian density for L_0
    d = GaussianDiffusion(Schedule.from_betas(make_betas("linear", 10, 1e-3, 0.1)))
    pts = list(0.8 * torch.randn(6, 2, generator=torch.Generator().manual_seed(0)))
    model = lambda x, step: 0.5 * x  # noqa: E731
    ref = bound_totals(model, d, pts, range(6), seed=3, t_per_batch=5, decoder="continuous")
    r = rate_distortion(model, d, pts, range(6), seed=3, t_per_batch=5, decoder="continuous")
    assert r.nll_bits_per_dim == pytest.approx(ref.total_bpd.mean().item(), rel=1e-12)
    assert r.decoder_bits_per_dim == pytest.approx(ref.decoder_bpd.mean().item(), rel=1e-12)
    discretized = rate_distortion(model, d, pts, range(6), seed=3, t_per_batch=5)  # the default stays Eq. 13
    assert discretized.decoder_bits_per_dim != pytest.approx(r.decoder_bits_per_dim, rel=1e-3)


def test_the_documented_analytic_bound_names_the_gamma_estimate_it_used():
    # `ddpm nll --variance analytic` without --n-images estimates Γ from DEFAULT_IMAGES training images
    text = (REPO / "docs" / "experiments.md").read_text()
    sentence = re.search(r"Analytic-DPM's variance on the\s+quickstart model \(([^)]*)\)", text)
    assert sentence, "the sentence with the quickstart model's analytic bound moved"
    said = sentence.group(1)
    counts = [int(n.replace(",", "")) for n in re.findall(r"Γ from (?:the )?([\d,]+) training images", said)]
    flag = re.search(r"--n-images (\d+)", said)
    assert counts, said
    assert counts[0] == (int(flag.group(1)) if flag else DEFAULT_IMAGES), said


def test_a_log_window_saved_by_ddpm_0_3_continues_with_its_losses_as_the_objective():
    from ddpm.train.logging import Window

    w = Window()
    w.add(torch.tensor([1.0, 3.0]), torch.tensor([1, 4]), 4, 0.5, 2, weights=torch.tensor([2.0, 0.5]))
    assert w.summary(1e-3)["loss"] == pytest.approx((2.0 + 1.5) / 2)
    assert w.summary(1e-3)["loss_t_q1"] == 1.0 and w.summary(1e-3)["loss_t_q4"] == 3.0  # unweighted L_t
    old = {k: v for k, v in w.state_dict().items() if k != "weighted_sum"}  # as 0.3 saved it
    resumed = Window()
    resumed.load_state_dict(old)
    assert resumed.summary(1e-3)["loss"] == pytest.approx(2.0)  # exact for uniform t (all weights 1)
    with pytest.raises(ValueError, match="weighted_sum"):
        resumed.load_state_dict({**old, "weighted_sum": torch.zeros(3)})


def test_toy_points_train_l0_with_the_decoder_their_bound_uses(tmp_path):
    """L_vlb on continuous 2-D points trained its L_0 with Eq. 13's 256-bin decoder while `ddpm nll` scores them
    with the Gaussian density; the trainer now takes the bound's decoder (images keep Eq. 13)."""
    from ddpm.train.trainer import Trainer

    toy = override(preset("toy2d"), loss_type="vlb", var_type="learned_range", T=4, total_steps=1)
    assert Trainer(toy, tmp_path / "toy", progress=False).decoder == "continuous"
    digits = override(preset("digits"), **{k: v for k, v in TINY.items() if k != "dropout"}, total_steps=1)
    assert Trainer(digits, tmp_path / "digits", progress=False).decoder == "discretized"
    d = GaussianDiffusion.from_config(toy.diffusion)
    x0 = 0.7 * torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    model = lambda x, step: torch.cat([0.5 * x, torch.zeros_like(x)], dim=1)  # noqa: E731
    for t, differs in ((1, True), (3, False)):  # only L_0 has a decoder
        tt = torch.full((5,), t)
        cont = d.training_losses(model, x0, tt, noise, "continuous").loss
        disc = d.training_losses(model, x0, tt, noise).loss
        assert (not torch.allclose(cont, disc)) == differs
