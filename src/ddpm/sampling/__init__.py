"""Samplers: one registry (``SAMPLERS``) of iterators of ``SampleStep`` with one signature — Algorithm 2,
DDIM, DPM-Solver++ (2M, 3M, 3M-Taylor, SDE-2M) — plus Fig. 7 reconstructions and Sec. 4.4 interpolation, and
classifier-free guidance as a wrapper around the model callable (``guidance``), so every sampler gets it.

Respacing happens in one place, ``GaussianDiffusion.with_steps(K, spacing)``; ``run`` drains a sampler.
"""

from .ancestral import ancestral_steps, ddim_steps
from .dpm_solver import dpm_solver_steps, dpmpp_2m_steps, dpmpp_3m_steps, dpmpp_3m_taylor_steps, sde_dpmpp_2m_steps
from .guidance import Conditioned, Guided, class_labels, guided
from .reconstruct import interpolate, reconstruct_from
from .registry import SAMPLER_NAMES, SAMPLERS, SamplerInfo, SamplerName, get_sampler, sample, sampler_help
from .steps import SampleStep, run

__all__ = [
    "Conditioned", "Guided", "SAMPLERS", "SAMPLER_NAMES", "SampleStep", "SamplerInfo", "SamplerName",
    "ancestral_steps", "class_labels", "ddim_steps", "dpm_solver_steps", "dpmpp_2m_steps", "dpmpp_3m_steps",
    "dpmpp_3m_taylor_steps", "get_sampler", "guided", "interpolate", "reconstruct_from", "run", "sample",
    "sampler_help", "sde_dpmpp_2m_steps",
]
