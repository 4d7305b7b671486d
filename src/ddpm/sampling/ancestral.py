"""Algorithm 2 (ancestral sampling) and DDIM (Song et al. 2021) on the steps of a (respaced) diffusion."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..diffusion import GaussianDiffusion, Model
from ..rng import GLOBAL_NOISE, Noise
from ..schedules import gather
from .steps import SampleStep, start_time, time_batch

Tensor = torch.Tensor


def ancestral_steps(model: Model, diffusion: GaussianDiffusion, x_T: Tensor, noise: Noise = GLOBAL_NOISE,
                    clip_denoised: bool = True, t_start: int | None = None) -> Iterator[SampleStep]:
    """Algorithm 2: for t = T..1, x_{t−1} = μ_θ(x_t, t) + σ_t z; the last step returns μ_θ(x_1, 1).

    ``t_start`` < T starts from a given x_t instead of x_T (Fig. 7, interpolation).
    """
    x = x_T
    for t in range(start_time(t_start, diffusion.T), 0, -1):
        tt = time_batch(t, x)
        z = noise.randn(tuple(x.shape), x.device) if t > 1 else torch.zeros_like(x)
        with torch.no_grad():
            x, p = diffusion.p_sample(model, x, tt, z, clip_denoised)
        yield SampleStep(t, x, p.pred_x0)


def ddim_steps(model: Model, diffusion: GaussianDiffusion, x_T: Tensor, noise: Noise = GLOBAL_NOISE,
               clip_denoised: bool = True, t_start: int | None = None, *, eta: float = 0.0) -> Iterator[SampleStep]:
    """DDIM (Song et al. 2021, Eq. 12) on the steps of ``diffusion`` (respace it first for fewer steps).

    η = 0 is deterministic; η = 1 matches the ancestral sampler's posterior variance β̃.
    """
    s = diffusion.schedule
    x = x_T
    for t in range(start_time(t_start, diffusion.T), 0, -1):
        tt = time_batch(t, x)
        with torch.no_grad():
            p = diffusion.p_mean_var(model, x, tt, clip_denoised)
        a_t = gather(s.alpha_bar, tt, x.ndim, x.dtype)
        a_prev = gather(s.alpha_bar_prev, tt, x.ndim, x.dtype)
        sigma = eta * torch.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        direction = torch.sqrt((1 - a_prev - sigma**2).clamp(min=0)) * p.pred_eps
        x = torch.sqrt(a_prev) * p.pred_x0 + direction
        if t > 1 and eta > 0:
            x = x + sigma * noise.randn(tuple(x.shape), x.device)
        yield SampleStep(t, x, p.pred_x0)
