"""Fixed β schedules and every table derived from them, in float64 (Sec. 2, Eqs. 4, 6-7).

Time runs t = 1..T as in the paper; tables are 0-indexed arrays whose entry t − 1 belongs to step t.
``gather`` is the one place where that conversion happens.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from .config import MAX_T, ConfigError, DiffusionConfig, ScheduleName

Tensor = torch.Tensor


# --- β schedules -------------------------------------------------------------------------------

def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """The paper's schedule: β increasing linearly from β_1 to β_T (Sec. 4)."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def quadratic_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """√β linear from √β_1 to √β_T (the official code's "quad")."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2


def constant_betas(T: int, beta: float = 0.02) -> Tensor:
    """β_t = β for every t."""
    return torch.full((T,), beta, dtype=torch.float64)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal (2021): ᾱ_t = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2), β clipped at 0.999."""
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def make_betas(name: ScheduleName, T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """β_1..β_T of a named schedule (``constant`` uses ``beta_end`` as its value)."""
    # the same bound as config validation, for callers that build a schedule without a RunConfig
    if isinstance(T, bool) or not isinstance(T, numbers.Integral) or not 1 <= T <= MAX_T:
        raise ConfigError(f"T (number of diffusion steps) must be an integer in 1..{MAX_T}, got {T!r}")
    if name == "linear":
        return linear_betas(T, beta_start, beta_end)
    if name == "quadratic":
        return quadratic_betas(T, beta_start, beta_end)
    if name == "constant":
        return constant_betas(T, beta_end)
    if name == "cosine":
        return cosine_betas(T)
    raise ConfigError(f"unknown schedule {name!r}; expected one of linear, quadratic, constant, cosine")


MIN_ALPHA_BAR = 1e-30  # ᾱ_T below this makes 1/√ᾱ_T and its products overflow float32 (the linear schedule: 4e-5)


# --- derived tables ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Schedule:
    """β_1..β_T and the float64 tables derived from it (index t − 1 holds step t)."""

    betas: Tensor                       # β_t
    alphas: Tensor                      # α_t = 1 − β_t
    alpha_bar: Tensor                   # ᾱ_t = Π_{s≤t} α_s (Eq. 4)
    alpha_bar_prev: Tensor              # ᾱ_{t−1}, with ᾱ_0 = 1
    sqrt_alpha_bar: Tensor              # √ᾱ_t, mean coefficient of q(x_t|x_0)
    sqrt_one_minus_alpha_bar: Tensor    # √(1 − ᾱ_t), std of q(x_t|x_0)
    sqrt_recip_alpha_bar: Tensor        # 1/√ᾱ_t, for x̂₀ (Eq. 15)
    sqrt_recipm1_alpha_bar: Tensor      # √(1/ᾱ_t − 1), for x̂₀ (Eq. 15)
    beta_tilde: Tensor                  # β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t (Eq. 7)
    beta_log: Tensor                    # log β_t, the upper end of a learned range of variances
    beta_log_clipped: Tensor            # log β_t with β_1 replaced by β̃_2: fixed σ_t² = β_t (Sec. 3.2)
    beta_tilde_log_clipped: Tensor      # log β̃_t with β̃_1 (= 0) replaced by β̃_2: fixed σ_t² = β̃_t
    posterior_coef_x0: Tensor           # √ᾱ_{t−1} β_t/(1 − ᾱ_t), weight of x_0 in μ̃_t (Eq. 7)
    posterior_coef_xt: Tensor           # √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t), weight of x_t in μ̃_t (Eq. 7)
    timesteps: Tensor                   # 0-indexed step of the original chain that each step is (respacing)

    @property
    def T(self) -> int:
        return int(self.betas.shape[0])

    @classmethod
    def from_betas(cls, betas: Tensor | Sequence[float], timesteps: Tensor | None = None) -> Schedule:
        """All tables from β_1..β_T; β must lie in (0, 1) and ᾱ must decrease."""
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 1:
            raise ConfigError("a schedule needs T >= 1 betas, got none")
        if betas.numel() > MAX_T:
            raise ConfigError(f"a schedule of {betas.numel()} betas is longer than T = {MAX_T}, the most supported")
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas >= 1).any():
            bad = betas[~((betas > 0) & (betas < 1))]
            raise ConfigError(f"every β_t must lie in (0, 1); got values such as {bad[:3].tolist()}")
        alphas = 1.0 - betas
        alpha_bar = torch.cumprod(alphas, 0)
        if (alpha_bar[1:] >= alpha_bar[:-1]).any():
            raise ConfigError("ᾱ_t must be strictly decreasing in t (underflow in the schedule?)")
        if alpha_bar[-1] < MIN_ALPHA_BAR:
            raise ConfigError(
                f"ᾱ_T = {alpha_bar[-1].item():.3g} is below {MIN_ALPHA_BAR:g}: 1/√ᾱ_T (Eq. 15) would overflow float32 "
                "arithmetic; use fewer steps or smaller β"
            )
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        beta_tilde = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
        # β̃_1 = 0: the posterior at t = 1 is a point mass; both fixed variances use β̃_2 there (as the official
        # code), so the decoder's scale at t = 1 is neither zero nor as large as β_1 would make it
        beta_log = torch.log(betas)
        if betas.numel() > 1:
            beta_log_clipped = torch.log(torch.cat([beta_tilde[1:2], betas[1:]]))
            log_clipped = torch.log(torch.cat([beta_tilde[1:2], beta_tilde[1:]]))
        else:
            beta_log_clipped, log_clipped = beta_log.clone(), beta_log.clone()
        if timesteps is None:
            timesteps = torch.arange(betas.numel(), dtype=torch.long)
        return cls(
            betas=betas,
            alphas=alphas,
            alpha_bar=alpha_bar,
            alpha_bar_prev=alpha_bar_prev,
            sqrt_alpha_bar=alpha_bar.sqrt(),
            sqrt_one_minus_alpha_bar=(1.0 - alpha_bar).sqrt(),
            sqrt_recip_alpha_bar=alpha_bar.rsqrt(),
            sqrt_recipm1_alpha_bar=(1.0 / alpha_bar - 1.0).sqrt(),
            beta_tilde=beta_tilde,
            beta_log=beta_log,
            beta_log_clipped=beta_log_clipped,
            beta_tilde_log_clipped=log_clipped,
            posterior_coef_x0=alpha_bar_prev.sqrt() * betas / (1.0 - alpha_bar),
            posterior_coef_xt=alphas.sqrt() * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar),
            timesteps=timesteps.to(torch.long),
        )

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> Schedule:
        """The schedule a diffusion config names."""
        return cls.from_betas(make_betas(cfg.schedule, cfg.T, cfg.beta_start, cfg.beta_end))

    def respace(self, use_steps: Sequence[int]) -> Schedule:
        """A shorter chain on the paper-time steps ``use_steps`` (1..T) keeping ᾱ at those steps.

        β'_k = 1 − ᾱ_{s_k}/ᾱ_{s_{k−1}}: the marginals q(x_s|x_0) are unchanged, so a network
        trained on the full chain serves the respaced one (Nichol & Dhariwal 2021, Sec. 4).
        """
        steps = sorted(set(int(s) for s in use_steps))
        if not steps or steps[0] < 1 or steps[-1] > self.T:
            raise ConfigError(f"respaced steps must lie in 1..{self.T}, got {steps[:3]}...{steps[-3:]}")
        alpha_bar = self.alpha_bar[torch.tensor(steps) - 1]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        return Schedule.from_betas(1.0 - alpha_bar / prev, timesteps=self.timesteps[torch.tensor(steps) - 1])


Spacing = Literal["uniform", "quadratic", "logsnr"]
SPACINGS: tuple[Spacing, ...] = ("uniform", "quadratic", "logsnr")


def spaced_steps(T: int, K: int, spacing: Spacing = "uniform", alpha_bar: Tensor | None = None) -> list[int]:
    """K distinct paper-time steps from 1..T, always including 1 and T (K > 1), for respacing and DDIM.

    ``uniform``: evenly spaced (t_i = 1 + ⌊i(T − 1)/(K − 1)⌋); ``quadratic``: t_i = 1 + ⌊(T − 1)(i/(K − 1))²⌋,
    dense at small t (DDIM, Song et al. 2021, App. D.2, here spanning 1..T); ``logsnr``: uniform in
    λ_t = ½ log(ᾱ_t/(1 − ᾱ_t)) between λ_1 and λ_T (DPM-Solver's default), which needs ``alpha_bar``.
    One rounding rule for all: round each position down, then push duplicates up (and never past T).
    """
    if isinstance(K, bool) or not isinstance(K, numbers.Integral) or not 1 <= K <= T:
        raise ConfigError(f"steps must be in 1..{T}, got {K!r}")
    if spacing not in SPACINGS:
        raise ConfigError(f"unknown spacing {spacing!r}; expected one of {', '.join(SPACINGS)}")
    if K == 1:
        return [T]
    if spacing == "uniform":
        # integer arithmetic, so these are exactly the steps of every earlier release
        return [1 + (i * (T - 1)) // (K - 1) for i in range(K)]
    frac = torch.arange(K, dtype=torch.float64) / (K - 1)
    if spacing == "quadratic":
        pos = 1 + (T - 1) * frac**2
    else:
        if alpha_bar is None or alpha_bar.numel() != T:
            raise ConfigError(f"spacing 'logsnr' needs the schedule's ᾱ_1..ᾱ_{T}")
        lam = 0.5 * torch.log(alpha_bar.double() / (1 - alpha_bar.double()))  # decreasing in t
        target = lam[0] + (lam[-1] - lam[0]) * frac
        # invert λ(t) by linear interpolation between integer t (λ decreases, so search −λ)
        hi = torch.searchsorted(-lam, -target).clamp(1, T - 1)
        w = (target - lam[hi - 1]) / (lam[hi] - lam[hi - 1])
        pos = hi.double() + w.clamp(0, 1)  # paper time of entry hi − 1 is hi
    steps: list[int] = []
    for i, u in enumerate(pos.tolist()):
        t = max(int(math.floor(u + 1e-9)), steps[-1] + 1 if steps else 1)
        steps.append(min(t, T - (K - 1 - i)))
    return steps


def gather(table: Tensor, t: Tensor, ndim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Entries t − 1 of a 0-indexed table for paper times t (B,), shaped (B, 1, ..., 1) to broadcast."""
    if t.ndim != 1:
        raise ValueError(f"t must be a 1-D tensor of paper times, got shape {tuple(t.shape)}")
    out = table.to(t.device)[t.long() - 1].to(dtype)
    return out.reshape(-1, *([1] * (ndim - 1)))
