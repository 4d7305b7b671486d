"""Analytic-DPM (Bao, Li, Zhu & Zhang, ICLR 2022): the optimal reverse variance from Γ_t = E‖ε_θ(x_t, t)‖²/d.

Notation as in the paper: ᾱ_t of Eq. 4 here, β̄_t = 1 − ᾱ_t, and a reverse step s < t of a (respaced) chain
whose forward family is q_λ(x_s|x_t, x_0) = N(μ̃_λ, λ² I) with
    μ̃_λ(x_t, x_0) = √ᾱ_s x_0 + √(β̄_s − λ²)·(x_t − √ᾱ_t x_0)/√β̄_t.          (Bao et al. Eq. 2, for s < t)
λ² = β̃ is the DDPM posterior (Eq. 7 of Ho et al.), λ² = 0 is DDIM (η = 0); λ² = η² β̃ in between.

Substituting x_0 = (x_t − √β̄_t ε)/√ᾱ_t gives μ̃_λ = √(ᾱ_s/ᾱ_t) x_t − c_λ ε with
    c_λ = √(β̄_t ᾱ_s/ᾱ_t) − √(β̄_s − λ²)        (√(β̄_n/α_n) − √(β̄_{n−1} − λ_n²) of Theorem 1 for s = n − 1).
The Gaussian p(x_s|x_t) = N(μ*(x_t), σ² I) closest in KL to q(x_s|x_t) matches its moments: μ* = μ̃_λ(x_t, E[x_0|x_t])
and σ*² = λ² + E tr Cov[μ̃_λ | x_t]/d = λ² + c_λ²(1 − E‖E[ε|x_t]‖²/d). With the network's ε_θ ≈ E[ε|x_t],
    σ*² = λ² + c_λ² (1 − Γ_t),    Γ_t = E_{q(x_t)} ‖ε_θ(x_t, t)‖²/d                     (Theorem 1, Eq. 7)
Γ_t ∈ [0, 1] for the exact E[ε|x_t] (a conditional mean has no more energy than ε ~ N(0, I)), so
λ² ≤ σ*² ≤ λ² + c_λ² (Theorem 2); and for data in [a, b]^d, written through x_0 instead of ε,
μ̃_λ = (√(β̄_s − λ²)/√β̄_t) x_t + d_λ x_0 with d_λ = √ᾱ_s − √(β̄_s − λ²)√(ᾱ_t/β̄_t), and Var[x_0|x_t] ≤ ((b − a)/2)²
per coordinate gives σ*² ≤ λ² + d_λ² ((b − a)/2)² (Theorem 2's second upper bound). A Monte-Carlo Γ may leave
[0, 1], so σ² is clipped into these bounds (the paper's clipping). These formulas are written from the paper's
statements as recalled and re-derived here from first principles (the paper itself could not be consulted).

Sampling (not the bound) also caps the noise of the step that lands on the chain's first kept time, as the authors'
sample-quality runs do (their code's ``clip_sigma_idx = 1``): E|σ z| = σ √(2/π) at most c grey levels, i.e.
σ² ≤ (c Δ)² π/2 with Δ = 2/(L − 1) the level spacing on [-1, 1] (2/255 for 256 levels), c = 2 for Analytic-DDPM
and 1 for Analytic-DDIM (their ``clip_pixel``). At few steps that step's σ*² is large and its noise is not removed
again by the final, noiseless step.

The mathematics takes only schedule tables and ε-predictions: no network import.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import torch

from ..config import ConfigError
from ..diffusion import GaussianDiffusion, Model, PMeanVar
from ..likelihood import mean_flat
from ..rng import GLOBAL_NOISE, Noise
from ..schedules import Schedule, Spacing, gather
from .ancestral import ancestral_steps
from .guidance import Conditioned
from .steps import SampleStep, time_batch

Tensor = torch.Tensor
Family = Literal["ddpm", "ddim"]
FAMILIES: tuple[Family, ...] = ("ddpm", "ddim")
MIN_VARIANCE = 1e-20  # σ² floor: DDIM's λ² = 0 with Γ clipped to 1 would give log σ² = −∞ in the bound


# --- Γ_t, the Monte-Carlo estimate -------------------------------------------------------------------------

def gamma_terms(eps: Tensor) -> Tensor:
    """‖ε_θ(x_t, t)‖²/d of each example (B,): the summand of Γ_t (Bao et al. Eq. 8, β̄_t‖s_θ‖² = ‖ε_θ‖²)."""
    return mean_flat(eps.double() ** 2)


def gamma_steps(T: int, steps: Sequence[int] | None = None) -> list[int]:
    """The paper times t a Γ estimate covers: all of 1..T, or ``steps`` (sorted, once each)."""
    ts = list(range(1, T + 1)) if steps is None else sorted(set(int(t) for t in steps))
    if not ts or ts[0] < 1 or ts[-1] > T:
        raise ConfigError(f"Γ steps must lie in 1..{T}, got {ts[:3]}")
    return ts


def gamma_sums(model: Model, diffusion: GaussianDiffusion, x0: Tensor, noise: Noise,
               steps: Sequence[int] | None = None, labels: Tensor | None = None) -> Tensor:
    """Σ over the batch ``x0`` of ‖ε_θ(x_t, t)‖²/d for each t of ``gamma_steps`` (float64 (T,), 0 at other t),
    with one draw x_t ~ q(x_t|x_0) per image and t, t in increasing order; ε_θ(x_t, t, y) with ``labels``.

    With one noise stream per image (``per_item``), an image's terms do not depend on the batch it is in: the
    sums of any split of the images into batches add up to the same Γ (``estimate_gamma``).
    """
    T = diffusion.T
    m = model if labels is None else Conditioned(model, labels)
    total = torch.zeros(T, dtype=torch.float64)
    for t in gamma_steps(T, steps):
        tt = time_batch(t, x0)
        x_t = diffusion.q_sample(x0, tt, noise.randn(tuple(x0.shape), x0.device))
        with torch.no_grad():
            # unclipped ε̂: Γ is a property of the network's ε-prediction, not of the sampler's clipping
            p = GaussianDiffusion.p_mean_var(diffusion, m, x_t, tt, clip_denoised=False)
        total[t - 1] += gamma_terms(p.pred_eps).sum().cpu()
    return total


def gamma_from_sums(sums: Iterable[Tensor], count: int, T: int, steps: Sequence[int] | None = None) -> Tensor:
    """Γ_t (float64 (T,), NaN at t outside ``steps``) from the batches' ``gamma_sums`` of ``count`` images, added
    in the order given (the order of the batches, whichever processes computed them)."""
    if count == 0:
        raise ConfigError("the Γ estimate needs at least one training image, got none")
    total = torch.zeros(T, dtype=torch.float64)
    for batch_sum in sums:
        total += batch_sum
    gamma = torch.full((T,), math.nan, dtype=torch.float64)
    idx = torch.tensor(gamma_steps(T, steps)) - 1
    gamma[idx] = total[idx] / count
    return gamma


def estimate_gamma(model: Model, diffusion: GaussianDiffusion, x0_batches: Iterable[Tensor | tuple[Tensor, Tensor]],
                   noise: Noise = GLOBAL_NOISE, steps: Sequence[int] | None = None) -> tuple[Tensor, int]:
    """(Γ_t for t = 1..T of ``diffusion`` as a float64 table (index t − 1), the number of images used).

    Γ_t = mean over images x_0 and one draw x_t ~ q(x_t|x_0) each of ‖ε_θ(x_t, t)‖²/d (Monte Carlo over the
    training images, Bao et al. Sec. 3); ``steps`` (paper times) limits the work to those t, the others are NaN.
    A batch (x_0, y) of a class-conditional network gives ε_θ(x_t, t, y): Γ of the conditional model. ``noise``
    serves every batch in turn (``gamma_sums`` for batches with noise of their own).
    """
    gamma_steps(diffusion.T, steps)  # checked before any network call
    sums, count = [], 0
    for batch in x0_batches:
        x0, labels = (batch, None) if torch.is_tensor(batch) else batch
        count += x0.shape[0]
        sums.append(gamma_sums(model, diffusion, x0, noise, steps, labels))
    return gamma_from_sums(sums, count, diffusion.T, steps), count


# --- σ*² for one reverse step s < t ------------------------------------------------------------------------

def lambda2(alpha_bar_s: Tensor, alpha_bar_t: Tensor, eta: float = 1.0) -> Tensor:
    """λ² = η² β̃_{s|t}, β̃_{s|t} = (β̄_s/β̄_t)(1 − ᾱ_t/ᾱ_s) (Eq. 7 of Ho et al. on a respaced step; η = 0 is DDIM)."""
    return eta**2 * (1 - alpha_bar_s) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_s)


def mean_coef_eps(alpha_bar_s: Tensor, alpha_bar_t: Tensor, lam2: Tensor) -> Tensor:
    """c_λ = √(β̄_t ᾱ_s/ᾱ_t) − √(β̄_s − λ²), the weight of −ε in μ̃_λ (Theorem 1's √(β̄_n/α_n) − √(β̄_{n−1} − λ_n²))."""
    return ((1 - alpha_bar_t) * alpha_bar_s / alpha_bar_t).sqrt() - (1 - alpha_bar_s - lam2).clamp(min=0).sqrt()


def mean_coef_x0(alpha_bar_s: Tensor, alpha_bar_t: Tensor, lam2: Tensor) -> Tensor:
    """d_λ = √ᾱ_s − √(β̄_s − λ²)·√(ᾱ_t/β̄_t), the weight of x_0 in μ̃_λ (for Theorem 2's bounded-data bound)."""
    return alpha_bar_s.sqrt() - (1 - alpha_bar_s - lam2).clamp(min=0).sqrt() * (alpha_bar_t / (1 - alpha_bar_t)).sqrt()


def variance_bounds(alpha_bar_s: Tensor, alpha_bar_t: Tensor, lam2: Tensor,
                    data_half_range: float | None = 1.0) -> tuple[Tensor, Tensor]:
    """(lower, upper) bound on σ*² (Theorem 2): λ² and min(λ² + c_λ², λ² + d_λ²·((b − a)/2)²).

    ``data_half_range`` = (b − a)/2 of the data (1 for images in [-1, 1]); None drops the bounded-data bound.
    """
    upper = lam2 + mean_coef_eps(alpha_bar_s, alpha_bar_t, lam2) ** 2
    if data_half_range is not None:
        upper = torch.minimum(upper, lam2 + mean_coef_x0(alpha_bar_s, alpha_bar_t, lam2) ** 2 * data_half_range**2)
    return lam2, upper


def optimal_variance(alpha_bar_s: Tensor, alpha_bar_t: Tensor, lam2: Tensor, gamma_t: Tensor,
                     data_half_range: float | None = 1.0, clip: bool = True) -> Tensor:
    """σ*² = λ² + c_λ²(1 − Γ_t) (Theorem 1 / Eq. 7 on the step s < t), clipped into Theorem 2's bounds."""
    var = lam2 + mean_coef_eps(alpha_bar_s, alpha_bar_t, lam2) ** 2 * (1 - gamma_t)
    if clip:
        lo, hi = variance_bounds(alpha_bar_s, alpha_bar_t, lam2, data_half_range)
        var = torch.minimum(torch.maximum(var, lo), hi)
    return var


def chain_variances(schedule: Schedule, gamma: Tensor, eta: float = 1.0,
                    data_half_range: float | None = 1.0) -> Tensor:
    """σ*² of each step of a (respaced) chain, index k − 1 for paper time k (the step to the previous kept time).

    ``gamma`` holds Γ per step of the original chain (0-indexed, as ``schedule.timesteps``); respacing only
    changes which ᾱ_s, ᾱ_t each step joins (Bao et al., App., the shorter trajectory).
    """
    gamma = torch.as_tensor(gamma, dtype=torch.float64)
    if int(schedule.timesteps.max()) >= gamma.numel():
        raise ConfigError(f"the Γ estimate has {gamma.numel()} steps, the chain reaches step "
                          f"{int(schedule.timesteps.max()) + 1} of its original chain")
    g = gamma[schedule.timesteps]
    if not torch.isfinite(g).all():
        missing = (schedule.timesteps[~torch.isfinite(g)] + 1).tolist()
        raise ConfigError(f"the Γ estimate lacks steps {missing[:5]} of this chain; recompute it for these steps")
    a_s, a_t = schedule.alpha_bar_prev, schedule.alpha_bar
    return optimal_variance(a_s, a_t, lambda2(a_s, a_t, eta), g, data_half_range).clamp(min=MIN_VARIANCE)


def capped_last_noise(variances: Tensor, levels: int, grey_levels: float) -> Tensor:
    """The chain's σ² with the step to its first kept time (index 1) capped at (c Δ)² π/2, Δ = 2/(L − 1), c =
    ``grey_levels``: that step's noise then moves a pixel by at most c grey levels on average (E|σ z| = σ √(2/π))."""
    if variances.numel() < 2:
        return variances  # a one-step chain adds no noise at all
    cap = (grey_levels * 2.0 / (levels - 1)) ** 2 * math.pi / 2
    out = variances.clone()
    out[1] = out[1].clamp(max=cap)
    return out


# c of ``capped_last_noise`` in the authors' sampling runs (their ``clip_pixel``), per family
LAST_NOISE_GREY_LEVELS: dict[Family, float] = {"ddpm": 2.0, "ddim": 1.0}

VarianceChoice = Literal["model", "analytic"]  # a chain's reverse variance: the model's Σ, or σ*² from Γ


# --- the diffusion that carries the estimate --------------------------------------------------------------

class AnalyticDiffusion(GaussianDiffusion):
    """A diffusion whose reverse variance is the fixed table σ*²_t built from a Γ estimate (one per family).

    ``gamma`` is per step of the original chain, so ``with_steps``/``respaced`` recompute σ*² for the new
    chain and every sampler, the bound and p_sample use it through ``p_mean_var``. ``eta`` = 1 is
    Analytic-DDPM (λ² = β̃, the posterior mean of Eq. 7); ``eta`` = 0 is Analytic-DDIM (λ² = 0).
    ``last_noise_grey_levels`` (the samplers' c, ``capped_last_noise``) caps the noise of the step to the first
    kept time; None, for the bound and the compressor, keeps σ*².
    """

    def __init__(self, base: GaussianDiffusion, gamma: Tensor, eta: float = 1.0,
                 data_half_range: float | None = 1.0, last_noise_grey_levels: float | None = None) -> None:
        super().__init__(base.schedule, base.mean_type, base.var_type, base.loss_type, base.levels,
                         base.hybrid_lambda)
        if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0 <= eta <= 1:
            raise ConfigError(f"eta of Analytic-DPM must be a number in [0, 1], got {eta!r}")
        self.gamma = torch.as_tensor(gamma, dtype=torch.float64)
        self.eta = float(eta)
        self.data_half_range = data_half_range
        self.last_noise_grey_levels = last_noise_grey_levels
        self.variances = chain_variances(self.schedule, self.gamma, self.eta, data_half_range)
        if last_noise_grey_levels is not None:
            self.variances = capped_last_noise(self.variances, self.levels, last_noise_grey_levels)
        self.log_variances = self.variances.log()

    def respaced(self, use_steps: list[int]) -> AnalyticDiffusion:
        """The same model and Γ on a shorter chain: σ*² recomputed for its steps."""
        return AnalyticDiffusion(super().respaced(use_steps), self.gamma, self.eta, self.data_half_range,
                                 self.last_noise_grey_levels)

    def with_steps(self, steps: int | None, spacing: Spacing = "uniform") -> AnalyticDiffusion:
        """``GaussianDiffusion.with_steps``, keeping the estimate."""
        out = super().with_steps(steps, spacing)
        assert isinstance(out, AnalyticDiffusion)
        return out

    def p_mean_var(self, model: Model, x_t: Tensor, t: Tensor, clip_denoised: bool = False) -> PMeanVar:
        """p(x_s|x_t) = N(μ̃_λ(x_t, x̂₀), σ*²_t I): the network's mean, the analytic variance."""
        p = super().p_mean_var(model, x_t, t, clip_denoised)
        n, dt = x_t.ndim, x_t.dtype
        mean = p.mean
        if self.eta != 1.0:
            # μ̃_λ = √ᾱ_s x̂₀ + √(β̄_s − λ²) ε̂ (DDIM, Song et al. Eq. 12): the posterior mean only when λ² = β̃
            a_s = gather(self.schedule.alpha_bar_prev, t, n, torch.float64)
            a_t = gather(self.schedule.alpha_bar, t, n, torch.float64)
            direction = (1 - a_s - lambda2(a_s, a_t, self.eta)).clamp(min=0).sqrt()
            mean = a_s.sqrt().to(dt) * p.pred_x0 + direction.to(dt) * p.pred_eps
        return PMeanVar(mean, gather(self.log_variances, t, n, dt).expand_as(x_t), p.pred_x0, p.pred_eps)


def analytic_steps(model: Model, diffusion: GaussianDiffusion, x_T: Tensor, family: Family,
                   noise: Noise = GLOBAL_NOISE, clip_denoised: bool = True,
                   t_start: int | None = None) -> Iterator[SampleStep]:
    """x_s = μ̃_λ(x_t, x̂₀) + σ*_t z for t = T..1 (z = 0 at t = 1) with the Γ estimate of an ``AnalyticDiffusion``:
    λ² of ``family``, and the last noisy step capped as the authors sample (``capped_last_noise``)."""
    if not isinstance(diffusion, AnalyticDiffusion):
        raise ConfigError("an Analytic-DPM sampler needs the Γ estimate (run `ddpm analytic-variance` on the "
                          "checkpoint); got a diffusion without one")
    diffusion = AnalyticDiffusion(diffusion, diffusion.gamma, 1.0 if family == "ddpm" else 0.0,
                                  diffusion.data_half_range, LAST_NOISE_GREY_LEVELS[family])
    # Algorithm 2's loop: AnalyticDiffusion's p_mean_var supplies μ̃_λ and σ*²
    yield from ancestral_steps(model, diffusion, x_T, noise, clip_denoised, t_start)


def analytic_ddpm_steps(model: Model, diffusion: GaussianDiffusion, x_T: Tensor, noise: Noise = GLOBAL_NOISE,
                        clip_denoised: bool = True, t_start: int | None = None) -> Iterator[SampleStep]:
    """Analytic-DDPM: ancestral steps with λ² = β̃ and σ*² from Γ (Bao et al. 2022)."""
    return analytic_steps(model, diffusion, x_T, "ddpm", noise, clip_denoised, t_start)


def analytic_ddim_steps(model: Model, diffusion: GaussianDiffusion, x_T: Tensor, noise: Noise = GLOBAL_NOISE,
                        clip_denoised: bool = True, t_start: int | None = None) -> Iterator[SampleStep]:
    """Analytic-DDIM: DDIM's mean (λ² = 0) with the optimal noise σ*² = c_0²(1 − Γ_t) (Bao et al. 2022)."""
    return analytic_steps(model, diffusion, x_T, "ddim", noise, clip_denoised, t_start)
