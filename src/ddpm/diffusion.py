"""The forward process q, the reverse process p_θ for every parameterization of Table 2, the losses
(L_simple Eq. 14, the bound Eq. 5, μ̃-MSE, hybrid) and the full variational bound in bits/dim.

The mathematics takes a callable ``model(x_t, step)`` (``step`` = the 0-indexed step the network was
trained with, see ``GaussianDiffusion.model_input_time``), never a network class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from .config import LEARNED_VAR_TYPES, ConfigError, DiffusionConfig, LossType, MeanType, VarType
from .likelihood import (
    discretized_gaussian_log_likelihood,
    gaussian_log_density,
    mean_flat,
    nats_to_bits_per_dim,
    normal_kl,
)
from .rng import GLOBAL_NOISE, Noise
from .schedules import SPACINGS, Schedule, Spacing, gather, spaced_steps

Tensor = torch.Tensor
Model = Callable[[Tensor, Tensor], Tensor]
Decoder = Literal["discretized", "continuous"]


# --- q(x_t | x_0), Eq. 4 -----------------------------------------------------------------------

def q_mean_var(s: Schedule, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Mean √ᾱ_t x_0 and variance (1 − ᾱ_t) of q(x_t|x_0) (Eq. 4)."""
    return gather(s.sqrt_alpha_bar, t, x0.ndim, x0.dtype) * x0, gather(1.0 - s.alpha_bar, t, x0.ndim, x0.dtype)


def q_sample(s: Schedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (Eq. 4, reparameterized)."""
    assert noise.shape == x0.shape, (noise.shape, x0.shape)
    return gather(s.sqrt_alpha_bar, t, x0.ndim, x0.dtype) * x0 + \
        gather(s.sqrt_one_minus_alpha_bar, t, x0.ndim, x0.dtype) * noise


# --- q(x_{t-1} | x_t, x_0), Eqs. 6-7 -----------------------------------------------------------

@dataclass(frozen=True)
class Gaussian:
    """A diagonal Gaussian by its mean and log-variance (the variance is derived)."""

    mean: Tensor
    log_var: Tensor

    @property
    def var(self) -> Tensor:
        return torch.exp(self.log_var)


def q_posterior(s: Schedule, x0: Tensor, x_t: Tensor, t: Tensor) -> Gaussian:
    """q(x_{t−1}|x_t, x_0) = N(μ̃_t, β̃_t I) (Eqs. 6-7); the log-variance at t = 1 is clipped to β̃_2."""
    assert x0.shape == x_t.shape, (x0.shape, x_t.shape)
    mean = gather(s.posterior_coef_x0, t, x0.ndim, x0.dtype) * x0 + \
        gather(s.posterior_coef_xt, t, x0.ndim, x0.dtype) * x_t
    return Gaussian(mean, gather(s.beta_tilde_log_clipped, t, x0.ndim, x0.dtype).expand_as(x0))


# --- conversions between what a network may predict --------------------------------------------

def x0_from_eps(s: Schedule, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """x̂₀ = (x_t − √(1 − ᾱ_t) ε)/√ᾱ_t (Eq. 15)."""
    return gather(s.sqrt_recip_alpha_bar, t, x_t.ndim, x_t.dtype) * x_t - \
        gather(s.sqrt_recipm1_alpha_bar, t, x_t.ndim, x_t.dtype) * eps


def eps_from_x0(s: Schedule, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
    """ε = (x_t − √ᾱ_t x̂₀)/√(1 − ᾱ_t), the inverse of Eq. 15."""
    return (gather(s.sqrt_recip_alpha_bar, t, x_t.ndim, x_t.dtype) * x_t - x0) / \
        gather(s.sqrt_recipm1_alpha_bar, t, x_t.ndim, x_t.dtype)


def x0_from_mu(s: Schedule, x_t: Tensor, t: Tensor, mu: Tensor) -> Tensor:
    """The x_0 whose posterior mean μ̃_t(x_t, x_0) equals ``mu`` (Eq. 7 solved for x_0)."""
    return (mu - gather(s.posterior_coef_xt, t, x_t.ndim, x_t.dtype) * x_t) / \
        gather(s.posterior_coef_x0, t, x_t.ndim, x_t.dtype)


# --- p_θ(x_{t-1} | x_t), Sec. 3.2 and Table 2 --------------------------------------------------

@dataclass(frozen=True)
class PMeanVar:
    """p_θ(x_{t−1}|x_t) = N(mean, e^log_var) and what the network implied about x_0 and ε."""

    mean: Tensor
    log_var: Tensor
    pred_x0: Tensor     # x̂₀ (Eq. 15 for the ε-parameterization)
    pred_eps: Tensor    # ε̂ implied by x̂₀

    @property
    def var(self) -> Tensor:
        return torch.exp(self.log_var)


def reverse_log_variance(s: Schedule, var_type: VarType, x_t: Tensor, t: Tensor,
                         var_output: Tensor | None) -> Tensor:
    """log σ_t² of p_θ: fixed to β_t or β̃_t (Sec. 3.2), or learned from the network's extra channels."""
    n, dt = x_t.ndim, x_t.dtype
    if var_type == "fixed_beta":
        return gather(s.beta_log_clipped, t, n, dt).expand_as(x_t)
    if var_type == "fixed_beta_tilde":
        return gather(s.beta_tilde_log_clipped, t, n, dt).expand_as(x_t)
    assert var_output is not None, "a learned Σ needs the network's variance channels"
    if var_type == "learned":
        return var_output  # the network outputs log σ² directly (Table 2, "learned diagonal Σ")
    if var_type == "learned_range":
        # Nichol & Dhariwal: interpolate log β̃_t and log β_t with v ∈ [-1, 1]
        frac = (var_output + 1) / 2
        return frac * gather(s.beta_log, t, n, dt) + (1 - frac) * gather(s.beta_tilde_log_clipped, t, n, dt)
    raise ValueError(f"unknown var_type {var_type!r}")


def p_mean_var_from_output(s: Schedule, mean_type: MeanType, var_type: VarType, output: Tensor, x_t: Tensor,
                           t: Tensor, clip_denoised: bool = False) -> PMeanVar:
    """p_θ(x_{t−1}|x_t) from the network's raw output for each parameterization of Table 2."""
    C = x_t.shape[1]
    learned = var_type in LEARNED_VAR_TYPES
    expected = 2 * C if learned else C
    if output.shape[1] != expected or output.shape[0] != x_t.shape[0] or output.shape[2:] != x_t.shape[2:]:
        raise ValueError(
            f"network output has shape {tuple(output.shape)}, expected {(x_t.shape[0], expected, *x_t.shape[2:])} "
            f"for var_type={var_type!r}"
        )
    mean_out, var_out = (output[:, :C], output[:, C:]) if learned else (output, None)
    log_var = reverse_log_variance(s, var_type, x_t, t, var_out)

    def clip(x: Tensor) -> Tensor:
        return x.clamp(-1, 1) if clip_denoised else x

    if mean_type == "eps":
        pred_x0 = clip(x0_from_eps(s, x_t, t, mean_out))
        # μ̃_t(x_t, x̂₀) equals Eq. 11's 1/√α_t (x_t − β_t/√(1 − ᾱ_t) ε_θ) when x̂₀ is not clipped
        mean = q_posterior(s, pred_x0, x_t, t).mean
    elif mean_type == "x0":
        pred_x0 = clip(mean_out)
        mean = q_posterior(s, pred_x0, x_t, t).mean
    elif mean_type == "mu":
        pred_x0 = clip(x0_from_mu(s, x_t, t, mean_out))
        mean = mean_out
    else:
        raise ValueError(f"unknown mean_type {mean_type!r}")
    return PMeanVar(mean, log_var, pred_x0, eps_from_x0(s, x_t, t, pred_x0))


# --- the diffusion: q, p_θ, losses and the bound, for one configuration ---------------------------

@dataclass(frozen=True)
class LossTerms:
    """Per-example training losses; ``loss`` is what is minimised."""

    loss: Tensor        # (B,)
    mse: Tensor         # (B,) the regression term (L_simple or μ̃-MSE), zero for "vlb"
    vlb_bpd: Tensor     # (B,) the bound term L_{t−1} in bits/dim (zero unless the loss uses it)
    t: Tensor           # (B,) paper times used


@dataclass(frozen=True)
class BoundTerms:
    """The variational bound (Eq. 5) of each example, term by term, in bits/dim."""

    total_bpd: Tensor       # (B,) L_T + Σ_{t>1} L_{t−1} + L_0
    prior_bpd: Tensor       # (B,) L_T = KL(q(x_T|x_0) ‖ N(0, I))
    terms_bpd: Tensor       # (B, T) column t − 1 holds L_{t−1}; column 0 is the decoder term L_0
    x0_mse: Tensor          # (B, T) mean squared error of x̂₀ at each t (on the [-1, 1] scale)


class GaussianDiffusion:
    """The DDPM of one configuration: a schedule plus the reverse-process parameterization and loss."""

    def __init__(self, schedule: Schedule, mean_type: MeanType = "eps", var_type: VarType = "fixed_beta",
                 loss_type: LossType = "simple", levels: int = 256, hybrid_lambda: float = 0.001) -> None:
        if loss_type == "mu_mse" and mean_type != "mu":
            raise ValueError("loss_type='mu_mse' needs mean_type='mu'")
        if levels < 2:
            raise ValueError(f"levels must be >= 2, got {levels}")
        self.schedule = schedule
        self.mean_type: MeanType = mean_type
        self.var_type: VarType = var_type
        self.loss_type: LossType = loss_type
        self.levels = levels
        self.hybrid_lambda = hybrid_lambda

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> GaussianDiffusion:
        """The diffusion a config describes."""
        return cls(Schedule.from_config(cfg), cfg.mean_type, cfg.var_type, cfg.loss_type, cfg.levels,
                   cfg.hybrid_lambda)

    @property
    def T(self) -> int:
        return self.schedule.T

    @property
    def learn_sigma(self) -> bool:
        return self.var_type in LEARNED_VAR_TYPES

    def respaced(self, use_steps: list[int]) -> GaussianDiffusion:
        """The same model on a shorter chain through paper-time steps ``use_steps``."""
        return GaussianDiffusion(self.schedule.respace(use_steps), self.mean_type, self.var_type,
                                 self.loss_type, self.levels, self.hybrid_lambda)

    def with_steps(self, steps: int | None, spacing: Spacing = "uniform") -> GaussianDiffusion:
        """The one respacing entry point: this model on ``steps`` of its T steps chosen by ``spacing``.

        ``None`` or T keeps the chain itself (bit-identical, no recomputed tables); see ``spaced_steps``.
        """
        if spacing not in SPACINGS:
            raise ConfigError(f"unknown spacing {spacing!r}; expected one of {', '.join(SPACINGS)}")
        if steps is None or (steps == self.T and not isinstance(steps, bool)):
            return self
        return self.respaced(spaced_steps(self.T, steps, spacing, self.schedule.alpha_bar))

    def model_input_time(self, t: Tensor) -> Tensor:
        """The network's time input for paper times t: the 0-indexed step of the original chain."""
        return self.schedule.timesteps.to(t.device)[t.long() - 1]

    def sample_t(self, batch: int, generator: torch.Generator | None, device: torch.device | str = "cpu") -> Tensor:
        """t ~ Uniform{1, ..., T} (Algorithm 1)."""
        return torch.randint(1, self.T + 1, (batch,), generator=generator).to(device)

    # q
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t ~ q(x_t|x_0) for given noise (Eq. 4)."""
        return q_sample(self.schedule, x0, t, noise)

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Gaussian:
        """q(x_{t−1}|x_t, x_0) (Eqs. 6-7)."""
        return q_posterior(self.schedule, x0, x_t, t)

    # p_θ
    def p_mean_var(self, model: Model, x_t: Tensor, t: Tensor, clip_denoised: bool = False) -> PMeanVar:
        """p_θ(x_{t−1}|x_t) for the network ``model``."""
        output = model(x_t, self.model_input_time(t))
        return p_mean_var_from_output(self.schedule, self.mean_type, self.var_type, output.to(x_t.dtype), x_t, t,
                                      clip_denoised)

    def p_sample(self, model: Model, x_t: Tensor, t: Tensor, noise: Tensor,
                 clip_denoised: bool = True) -> tuple[Tensor, PMeanVar]:
        """One step of Algorithm 2: x_{t−1} = μ_θ + σ_t z, with z = 0 at t = 1."""
        p = self.p_mean_var(model, x_t, t, clip_denoised)
        nonzero = (t > 1).to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        return p.mean + nonzero * torch.exp(0.5 * p.log_var) * noise, p

    # the bound
    def prior_bpd(self, x0: Tensor) -> Tensor:
        """L_T = KL(q(x_T|x_0) ‖ N(0, I)) in bits/dim (B,)."""
        t = torch.full((x0.shape[0],), self.T, device=x0.device, dtype=torch.long)
        mean, var = q_mean_var(self.schedule, x0, t)
        kl = normal_kl(mean, torch.log(var), torch.zeros_like(mean), torch.zeros_like(mean))
        return mean_flat(kl) / torch.log(torch.tensor(2.0))

    def vlb_term_bpd(self, p: PMeanVar, x0: Tensor, x_t: Tensor, t: Tensor,
                     decoder: Decoder = "discretized") -> Tensor:
        """L_{t−1} of Eq. 5 in bits/dim (B,): KL(q(x_{t−1}|x_t,x_0) ‖ p_θ) for t > 1, −log p_θ(x_0|x_1) at t = 1.

        ``decoder="continuous"`` replaces Eq. 13 by the Gaussian density (for continuous data; the
        result is then a bound on the differential entropy, not on a codelength).
        """
        if decoder not in ("discretized", "continuous"):
            raise ValueError(f"unknown decoder {decoder!r}; expected 'discretized' or 'continuous'")
        q = self.q_posterior(x0, x_t, t)
        # each term sees harmless inputs on the examples whose value it does not give: torch.where's backward
        # multiplies an unused branch's gradient by 0, and 0·∞ = NaN (e.g. the decoder of a tiny learned σ at t > 1)
        first = (t == 1).reshape(-1, *([1] * (x0.ndim - 1)))
        kl_mean, kl_log_var = torch.where(first, q.mean, p.mean), torch.where(first, q.log_var, p.log_var)
        dec_mean, dec_log_var = torch.where(first, p.mean, x0), torch.where(first, p.log_var, 0.0)
        kl = mean_flat(normal_kl(q.mean, q.log_var, kl_mean, kl_log_var))
        if decoder == "discretized":  # Eq. 13, with the reverse step's variance as its scale
            log_p = discretized_gaussian_log_likelihood(x0, dec_mean, 0.5 * dec_log_var, self.levels)
        else:
            log_p = gaussian_log_density(x0, dec_mean, 0.5 * dec_log_var)
        return nats_to_bits_per_dim(torch.where(t == 1, -mean_flat(log_p), kl), 1)

    def training_losses(self, model: Model, x0: Tensor, t: Tensor, noise: Tensor,
                        decoder: Decoder = "discretized") -> LossTerms:
        """The configured loss at times t (Algorithm 1's objective for L_simple); L_vlb's L_0 by ``decoder``
        (Eq. 13 for images, the Gaussian density for continuous points: what the bound evaluates)."""
        if t.shape != (x0.shape[0],):
            raise ValueError(f"t must hold one paper time per example, shape {(x0.shape[0],)}, got {tuple(t.shape)}")
        # a 0-indexed t (the official code's) would read table entry −1, i.e. step T, without any error
        if t.numel() and not bool(((t >= 1) & (t <= self.T)).all()):
            raise ValueError(f"t must hold paper times in 1..{self.T}, got values from {int(t.min())} "
                             f"to {int(t.max())}")
        x_t = self.q_sample(x0, t, noise)
        output = model(x_t, self.model_input_time(t)).to(x0.dtype)
        C = x0.shape[1]
        zero = torch.zeros(x0.shape[0], device=x0.device, dtype=x0.dtype)
        mse, vlb = zero, zero
        if self.loss_type in ("simple", "mu_mse", "hybrid"):
            target = {
                "eps": noise,
                "x0": x0,
                "mu": self.q_posterior(x0, x_t, t).mean,
            }[self.mean_type]
            mse = mean_flat((target - output[:, :C]) ** 2)  # Eq. 14 for ε; unweighted μ̃-MSE for μ
        if self.loss_type in ("vlb", "hybrid"):
            if self.loss_type == "hybrid":
                # L_vlb trains only Σ here: the mean is frozen (Nichol & Dhariwal, Sec. 3.1)
                output = torch.cat([output[:, :C].detach(), output[:, C:]], dim=1)
            p = p_mean_var_from_output(self.schedule, self.mean_type, self.var_type, output, x_t, t)
            vlb = self.vlb_term_bpd(p, x0, x_t, t, decoder)
        if self.loss_type == "hybrid":
            loss = mse + self.hybrid_lambda * self.T * vlb  # λ·L_vlb with L_vlb ≈ T·E_t[L_{t−1}]
        else:
            loss = mse + vlb
        return LossTerms(loss, mse, vlb, t)

    def bound_chunks(self, model: Model, x0: Tensor, noise: Noise, clip_denoised: bool = True,
                     t_per_batch: int = 1, decoder: Decoder = "discretized",
                     ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Yield (t, L_{t−1} bits/dim (B, k), x̂₀ MSE (B, k)) for chunks of k times from T down to 1.

        Each chunk evaluates the network once on B·k inputs: the terms of many t are batched.
        """
        B = x0.shape[0]
        for hi in range(self.T, 0, -t_per_batch):
            ts = torch.arange(hi, max(hi - t_per_batch, 0), -1, device=x0.device)
            k = ts.numel()
            x0_rep = x0.repeat(k, *([1] * (x0.ndim - 1)))  # (k·B, ...), time-major
            t = ts.repeat_interleave(B)
            eps = torch.cat([noise.randn(tuple(x0.shape), x0.device) for _ in range(k)])
            x_t = self.q_sample(x0_rep, t, eps)
            p = self.p_mean_var(model, x_t, t, clip_denoised)
            terms = self.vlb_term_bpd(p, x0_rep, x_t, t, decoder).reshape(k, B).T
            mse = mean_flat((p.pred_x0 - x0_rep) ** 2).reshape(k, B).T
            yield ts, terms, mse

    @torch.no_grad()
    def bound(self, model: Model, x0: Tensor, noise: Noise = GLOBAL_NOISE, clip_denoised: bool = True,
              t_per_batch: int = 1, decoder: Decoder = "discretized") -> BoundTerms:
        """Every term of the variational bound (Eq. 5) for a batch, in bits/dim."""
        B = x0.shape[0]
        terms = torch.zeros(B, self.T, device=x0.device, dtype=x0.dtype)
        mse = torch.zeros_like(terms)
        for ts, chunk_terms, chunk_mse in self.bound_chunks(model, x0, noise, clip_denoised, t_per_batch,
                                                                  decoder):
            terms[:, ts - 1] = chunk_terms
            mse[:, ts - 1] = chunk_mse
        prior = self.prior_bpd(x0)
        return BoundTerms(prior + terms.sum(dim=1), prior, terms, mse)
