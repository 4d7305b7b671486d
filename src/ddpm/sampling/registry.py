"""The one table of samplers: name → iterator of SampleStep, a one-line description and what it takes.

Every sampler has the signature ``steps(model, diffusion, x_T, noise, clip_denoised, t_start)`` (``noise`` a
``ddpm.rng.Noise`` source; extra
knobs keyword-only, e.g. DDIM's ``eta``); ``sample``, the CLI, the quickstart and the benchmarks read their
names and help from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ..config import ConfigError
from ..diffusion import GaussianDiffusion, Model
from ..nets.precision import in_bfloat16
from ..rng import GLOBAL_NOISE, Noise
from ..schedules import Spacing
from .analytic import analytic_ddim_steps, analytic_ddpm_steps
from .ancestral import ancestral_steps, ddim_steps
from .dpm_solver import dpmpp_2m_steps, dpmpp_3m_steps, dpmpp_3m_taylor_steps, sde_dpmpp_2m_steps
from .guidance import ClassSpec, check_guidance, class_labels, guided, model_classes
from .steps import SampleStep, run

Tensor = torch.Tensor
SamplerFn = Callable[..., Iterator[SampleStep]]
SamplerName = str  # a key of SAMPLERS


@dataclass(frozen=True)
class SamplerInfo:
    """One registered sampler."""

    steps: SamplerFn          # (model, diffusion, x_T, noise, clip_denoised, t_start) -> SampleSteps
    description: str          # one line, shown by `ddpm sample --help`
    stochastic: bool          # draws fresh noise each step (else x_T fixes the result)
    takes_t_start: bool = True  # can start from a given x_t at paper time t_start
    takes_eta: bool = False   # DDIM's η
    needs_gamma: bool = False  # needs an AnalyticDiffusion (the Γ estimate of Analytic-DPM), refused otherwise
    spacing: Spacing = "uniform"  # which steps of the T a shorter chain takes unless told (schedules.spaced_steps)


# The DPM-Solver++ family runs on log-SNR spacing unless told (Lu et al. 2022 advise it for low-resolution models):
# on the digits quickstart model, 8 seeds, it is 4.7 / 8.6 / 5.5 FD below uniform spacing at 10 steps for 2M /
# SDE-2M / 3M, level at 50 (benchmarks/README.md). DDIM, Algorithm 2 and Analytic-DPM keep their papers' uniform.
_LOGSNR: Spacing = "logsnr"


SAMPLERS: dict[str, SamplerInfo] = {
    "ancestral": SamplerInfo(ancestral_steps, "Algorithm 2 of Ho et al. (2020): x_{t-1} = mu_theta + sigma_t z",
                             stochastic=True),
    "ddim": SamplerInfo(ddim_steps, "DDIM (Song et al. 2021, Eq. 12); --eta 0 is deterministic", stochastic=False,
                        takes_eta=True),
    "dpm++2m": SamplerInfo(dpmpp_2m_steps, "DPM-Solver++(2M) (Lu et al. 2022), second order ODE, 10-25 steps",
                           stochastic=False, spacing=_LOGSNR),
    "dpm++3m": SamplerInfo(dpmpp_3m_steps, "DPM-Solver++(3M) as in diffusers (measured second order, below 2M's "
                           "error)", stochastic=False, spacing=_LOGSNR),
    "dpm++3m-taylor": SamplerInfo(dpmpp_3m_taylor_steps, "DPM-Solver++(3M) with the Taylor second difference "
                                  "(measured third order; not diffusers' trajectory)", stochastic=False,
                                  spacing=_LOGSNR),
    "sde-dpm++2m": SamplerInfo(sde_dpmpp_2m_steps, "SDE-DPM-Solver++(2M), the reverse SDE with fresh noise each "
                               "step", stochastic=True, spacing=_LOGSNR),
    "analytic-ddpm": SamplerInfo(analytic_ddpm_steps, "Analytic-DDPM (Bao et al. 2022): ancestral steps with the "
                                 "optimal variance from the stored Gamma estimate", stochastic=True, needs_gamma=True),
    "analytic-ddim": SamplerInfo(analytic_ddim_steps, "Analytic-DDIM (Bao et al. 2022): DDIM's mean plus the optimal "
                                 "noise from the stored Gamma estimate", stochastic=True, needs_gamma=True),
}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)


def get_sampler(name: str) -> SamplerInfo:
    """The registered sampler ``name``; an unknown name is a ConfigError listing the known ones."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLER_NAMES)}")
    return SAMPLERS[name]


def spacing_for(sampler: SamplerName, spacing: Spacing | None) -> Spacing:
    """The spacing a shorter chain of ``sampler`` takes: ``spacing``, or the sampler's own when None."""
    return get_sampler(sampler).spacing if spacing is None else spacing


def sampler_help() -> str:
    """One line per sampler, for ``--help``."""
    return "\n".join(f"  {name:<12} {info.description}" for name, info in SAMPLERS.items())


def sample(model: Model, diffusion: GaussianDiffusion, shape: Sequence[int], noise: Noise = GLOBAL_NOISE,
           sampler: SamplerName = "ancestral", steps: int | None = None, eta: float = 0.0,
           clip_denoised: bool = True, device: torch.device | str = "cpu", progress: bool = False,
           spacing: Spacing | None = None, bf16: bool = False, classes: ClassSpec = None,
           guidance: float = 0.0) -> Tensor:
    """Samples x_0 of ``shape`` with a registered sampler on all T steps or ``steps`` of them (``spacing``; None:
    the sampler's own, ``SamplerInfo.spacing``).

    ``bf16`` runs the network alone under bfloat16 autocast; the sampler's arithmetic stays in float32.
    A class-conditional model samples ``classes`` (a name or index for all, one per sample, or "all": as many of
    each class, class-major), guided with weight ``guidance`` = w (``ddpm.sampling.guidance``); without classes
    it samples p(x), through its "no class" input.
    """
    info = get_sampler(sampler)
    labels = class_labels(model, classes, shape[0])
    guidance = check_guidance(guidance, labels is not None)
    num_classes = model_classes(model)[0]
    if bf16:
        model = in_bfloat16(model)
    if labels is not None:
        assert num_classes is not None  # class_labels refuses classes for an unconditional model
        model = guided(model, labels.to(device), guidance, num_classes, diffusion.learn_sigma)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise ConfigError(f"eta must be a finite number >= 0, got {eta!r}")
    if eta and not info.takes_eta:
        raise ConfigError(f"eta applies to ddim only, not to sampler {sampler!r}; got eta={eta!r}")
    d = diffusion.with_steps(steps, spacing_for(sampler, spacing))
    x_T = noise.randn(tuple(shape), device)
    extra = {"eta": eta} if info.takes_eta else {}
    it = info.steps(model, d, x_T, noise, clip_denoised, **extra)
    return run(it, progress, d.T, desc=f"{sampler} ({d.T} steps)")
