"""Denoising Diffusion Probabilistic Models (Ho, Jain, Abbeel 2020) in PyTorch.

The names a newcomer needs, one import away::

    import ddpm
    model = ddpm.load_model("runs/digits")                     # a checkpoint (or a run's latest)
    noise = ddpm.per_item(seed=0, purpose="sample", indices=range(16))  # sample i: its own stream
    x = ddpm.sample(model, model.diffusion, (16, *model.sample_shape), noise, sampler="dpm++2m", steps=20)

Everything else lives in the submodules (``ddpm.schedules``, ``ddpm.diffusion``, ``ddpm.sampling``,
``ddpm.evaluation``, …; docs/architecture.md maps them). The names below are imported on first use, so
``import ddpm`` stays cheap for the command line.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.3.0"

# name -> the module that defines it (each is written once, there)
_EXPORTS = {
    "PRESETS": "ddpm.config", "RunConfig": "ddpm.config", "UNetConfig": "ddpm.config", "MLPConfig": "ddpm.config",
    "DiffusionConfig": "ddpm.config", "DataConfig": "ddpm.config", "TrainConfig": "ddpm.config",
    "preset": "ddpm.config", "override": "ddpm.config",
    "GaussianDiffusion": "ddpm.diffusion",
    "build_model": "ddpm.nets", "network_for": "ddpm.nets",
    "dataset_for": "ddpm.data",
    "LoadedModel": "ddpm.loading", "load_model": "ddpm.loading",
    "SAMPLER_NAMES": "ddpm.sampling", "sample": "ddpm.sampling",
    "GlobalNoise": "ddpm.rng", "per_item": "ddpm.rng",
}  # training is ddpm.train.train(cfg, run_dir): the package ddpm.train holds the name ``train`` itself
__all__ = sorted(_EXPORTS) + ["__version__"]

def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'ddpm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
