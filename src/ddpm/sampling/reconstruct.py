"""Fig. 7 (samples of p_θ(x_0|x_t) from one frozen x_t) and Sec. 4.4 (interpolation in x_t)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..diffusion import GaussianDiffusion, Model, q_sample
from ..rng import GLOBAL_NOISE, Noise, SharedNoise
from .ancestral import ancestral_steps
from .steps import run

Tensor = torch.Tensor


def reconstruct_from(model: Model, diffusion: GaussianDiffusion, x0: Tensor, t: int, n: int,
                     noise: Noise = GLOBAL_NOISE, clip_denoised: bool = True,
                     sample_noise: Noise | None = None) -> tuple[Tensor, Tensor]:
    """Fig. 7: one x_t ~ q(x_t|x_0) frozen, then ``n`` samples of p_θ(x_0|x_t). Returns (x_t, samples (n, ...)).

    x_t draws from ``noise``, the samples' reverse steps from ``sample_noise`` (default: ``noise`` too; a
    ``PerItemNoise`` makes sample j independent of how many are drawn)."""
    if x0.shape[0] != 1:
        raise ValueError(f"reconstruct_from takes one image (batch of 1), got a batch of {x0.shape[0]}")
    if not 1 <= t <= diffusion.T:
        raise ValueError(f"t must be in 1..{diffusion.T}, got {t}")
    tt = torch.full((1,), t, device=x0.device, dtype=torch.long)
    x_t = q_sample(diffusion.schedule, x0, tt, noise.randn(tuple(x0.shape), x0.device))
    samples = run(ancestral_steps(model, diffusion, x_t.repeat(n, *([1] * (x0.ndim - 1))),
                                  noise if sample_noise is None else sample_noise, clip_denoised, t_start=t))
    return x_t, samples


def interpolate(model: Model, diffusion: GaussianDiffusion, x0_a: Tensor, x0_b: Tensor, t: int,
                lambdas: Sequence[float], noise: Noise = GLOBAL_NOISE, clip_denoised: bool = True) -> Tensor:
    """Sec. 4.4: encode both images to x_t with shared noise, mix x̄_t = (1 − λ) x_t + λ x'_t, decode each.

    Returns (len(lambdas), ...) images; the reverse process shares one noise stream across λ.
    """
    if x0_a.shape != x0_b.shape or x0_a.shape[0] != 1:
        raise ValueError(f"interpolate takes two single images of one shape, got {tuple(x0_a.shape)}, "
                         f"{tuple(x0_b.shape)}")
    if not 1 <= t <= diffusion.T:
        raise ValueError(f"t must be in 1..{diffusion.T}, got {t}")
    tt = torch.full((1,), t, device=x0_a.device, dtype=torch.long)
    eps = noise.randn(tuple(x0_a.shape), x0_a.device)  # the same ε for both encodings
    x_t_a, x_t_b = q_sample(diffusion.schedule, x0_a, tt, eps), q_sample(diffusion.schedule, x0_b, tt, eps)
    lam = torch.tensor(list(lambdas), device=x0_a.device, dtype=x0_a.dtype).reshape(-1, *([1] * (x0_a.ndim - 1)))
    mixed = (1 - lam) * x_t_a + lam * x_t_b
    return run(ancestral_steps(model, diffusion, mixed, SharedNoise(noise), clip_denoised, t_start=t))
