"""Samplers: Algorithm 2 (ancestral), its respaced form, and DDIM (Song et al. 2021); stochastic
reconstruction from a frozen x_t (Fig. 7) and interpolation in x_t (Sec. 4.4).

Every sampler has one signature, ``sampler(model, diffusion, x_T, generator, clip_denoised)``, and is an
iterator of ``SampleStep``s so that progressive generation (Fig. 6) can watch x_t and x̂₀ at each step;
``run`` drains one and returns x_0.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from .diffusion import GaussianDiffusion, Generators, Model, SharedNoise, q_sample, randn
from .schedules import gather, spaced_steps

Tensor = torch.Tensor
SamplerName = Literal["ancestral", "ddim"]


@dataclass(frozen=True)
class SampleStep:
    """The state after the reverse step at paper time t: x_{t−1} and the prediction x̂₀ made at x_t."""

    t: int
    x: Tensor         # x_{t−1}; at t = 1 this is the sample x_0
    pred_x0: Tensor   # x̂₀(x_t) (Eq. 15)



def ancestral_steps(model: Model, diffusion: GaussianDiffusion, x_T: Tensor, generator: Generators = None,
                    clip_denoised: bool = True, t_start: int | None = None) -> Iterator[SampleStep]:
    """Algorithm 2: for t = T..1, x_{t−1} = μ_θ(x_t, t) + σ_t z; the last step returns μ_θ(x_1, 1).

    ``t_start`` < T starts from a given x_t instead of x_T (Fig. 7, interpolation).
    """
    x = x_T
    B = x.shape[0]
    for t in range(t_start or diffusion.T, 0, -1):
        tt = torch.full((B,), t, device=x.device, dtype=torch.long)
        noise = randn(tuple(x.shape), generator, x.device) if t > 1 else torch.zeros_like(x)
        with torch.no_grad():
            x, p = diffusion.p_sample(model, x, tt, noise, clip_denoised)
        yield SampleStep(t, x, p.pred_x0)


def ddim_steps(model: Model, diffusion: GaussianDiffusion, x_T: Tensor, generator: Generators = None,
               clip_denoised: bool = True, eta: float = 0.0) -> Iterator[SampleStep]:
    """DDIM (Song et al. 2021, Eq. 12) on the steps of ``diffusion`` (respace it first for fewer steps).

    η = 0 is deterministic; η = 1 matches the ancestral sampler's posterior variance β̃.
    """
    s = diffusion.schedule
    x = x_T
    B = x.shape[0]
    for t in range(diffusion.T, 0, -1):
        tt = torch.full((B,), t, device=x.device, dtype=torch.long)
        with torch.no_grad():
            p = diffusion.p_mean_var(model, x, tt, clip_denoised)
        a_t = gather(s.alpha_bar, tt, x.ndim, x.dtype)
        a_prev = gather(s.alpha_bar_prev, tt, x.ndim, x.dtype)
        sigma = eta * torch.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        direction = torch.sqrt((1 - a_prev - sigma**2).clamp(min=0)) * p.pred_eps
        x = torch.sqrt(a_prev) * p.pred_x0 + direction
        if t > 1 and eta > 0:
            x = x + sigma * randn(tuple(x.shape), generator, x.device)
        yield SampleStep(t, x, p.pred_x0)


def run(steps: Iterator[SampleStep], progress: bool = False, total: int | None = None,
        desc: str = "sampling") -> Tensor:
    """Drain a sampler and return its final x_0."""
    final: SampleStep | None = None
    for step in tqdm(steps, total=total, desc=desc, disable=not progress, leave=False):
        final = step
    if final is None:
        raise ValueError("the sampler produced no step")
    return final.x


def sample(model: Model, diffusion: GaussianDiffusion, shape: Sequence[int], generator: Generators = None,
           sampler: SamplerName = "ancestral", steps: int | None = None, eta: float = 0.0,
           clip_denoised: bool = True, device: torch.device | str = "cpu", progress: bool = False) -> Tensor:
    """Samples x_0 of ``shape`` with Algorithm 2 or DDIM, on all T steps or ``steps`` evenly spaced ones."""
    d = diffusion if steps is None or steps == diffusion.T else diffusion.respaced(spaced_steps(diffusion.T, steps))
    x_T = randn(tuple(shape), generator, device)
    if sampler == "ancestral":
        it = ancestral_steps(model, d, x_T, generator, clip_denoised)
    elif sampler == "ddim":
        it = ddim_steps(model, d, x_T, generator, clip_denoised, eta)
    else:
        raise ValueError(f"unknown sampler {sampler!r}; expected 'ancestral' or 'ddim'")
    return run(it, progress, d.T, desc=f"{sampler} ({d.T} steps)")


def sample_generators(seed: int, first_index: int, count: int) -> list[torch.Generator]:
    """One generator per sample, seeded by (seed, sample index): results do not depend on batching or sharding."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + first_index + i) for i in range(count)]


# --- Fig. 7 and Sec. 4.4 -------------------------------------------------------------------------

def reconstruct_from(model: Model, diffusion: GaussianDiffusion, x0: Tensor, t: int, n: int,
                     generator: Generators = None, clip_denoised: bool = True) -> tuple[Tensor, Tensor]:
    """Fig. 7: one x_t ~ q(x_t|x_0) frozen, then ``n`` samples of p_θ(x_0|x_t). Returns (x_t, samples (n, ...))."""
    if x0.shape[0] != 1:
        raise ValueError(f"reconstruct_from takes one image (batch of 1), got a batch of {x0.shape[0]}")
    if not 1 <= t <= diffusion.T:
        raise ValueError(f"t must be in 1..{diffusion.T}, got {t}")
    tt = torch.full((1,), t, device=x0.device, dtype=torch.long)
    x_t = q_sample(diffusion.schedule, x0, tt, randn(tuple(x0.shape), generator, x0.device))
    samples = run(ancestral_steps(model, diffusion, x_t.repeat(n, *([1] * (x0.ndim - 1))), generator,
                                  clip_denoised, t_start=t))
    return x_t, samples


def interpolate(model: Model, diffusion: GaussianDiffusion, x0_a: Tensor, x0_b: Tensor, t: int,
                lambdas: Sequence[float], generator: Generators = None, clip_denoised: bool = True) -> Tensor:
    """Sec. 4.4: encode both images to x_t with shared noise, mix x̄_t = (1 − λ) x_t + λ x'_t, decode each.

    Returns (len(lambdas), ...) images; the reverse process shares one noise stream across λ.
    """
    if x0_a.shape != x0_b.shape or x0_a.shape[0] != 1:
        raise ValueError(f"interpolate takes two single images of one shape, got {tuple(x0_a.shape)}, "
                         f"{tuple(x0_b.shape)}")
    if not 1 <= t <= diffusion.T:
        raise ValueError(f"t must be in 1..{diffusion.T}, got {t}")
    tt = torch.full((1,), t, device=x0_a.device, dtype=torch.long)
    noise = randn(tuple(x0_a.shape), generator, x0_a.device)  # the same ε for both encodings
    x_t_a, x_t_b = q_sample(diffusion.schedule, x0_a, tt, noise), q_sample(diffusion.schedule, x0_b, tt, noise)
    lam = torch.tensor(list(lambdas), device=x0_a.device, dtype=x0_a.dtype).reshape(-1, *([1] * (x0_a.ndim - 1)))
    mixed = (1 - lam) * x_t_a + lam * x_t_b
    shared = SharedNoise(generator if isinstance(generator, torch.Generator) else None)
    return run(ancestral_steps(model, diffusion, mixed, shared, clip_denoised, t_start=t))
