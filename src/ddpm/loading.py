"""A trained (or converted) model ready to sample and evaluate: network, diffusion and config from a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint
from .config import RunConfig
from .diffusion import GaussianDiffusion
from .nets import build_model


@dataclass
class LoadedModel:
    """A network in eval mode, its diffusion and the run config it was trained with."""

    net: nn.Module
    diffusion: GaussianDiffusion
    config: RunConfig
    step: int
    weights: str  # "ema" or "model"

    def __call__(self, x_t: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, steps)


def load_model(path: str | Path, weights: str = "ema", device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint directory (or a run directory's latest) for sampling; ``weights`` is "ema" or "model".

    The EMA weights are what the paper evaluates; a model-only checkpoint (e.g. converted official weights,
    which are EMA weights already) has just one set, used for either choice.
    """
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    ckpt = load_checkpoint(path)
    cfg = RunConfig.from_dict(ckpt.config)
    state = ckpt.ema if weights == "ema" and ckpt.ema is not None else ckpt.model
    used = "ema" if weights == "ema" and ckpt.ema is not None else "model"
    net = build_model(cfg.model)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit the network its config describes: missing {sorted(missing)[:10]}, "
            f"unexpected {sorted(unexpected)[:10]}"
        )
    net.to(device).eval()
    return LoadedModel(net, GaussianDiffusion.from_config(cfg.diffusion), cfg, ckpt.step, used)
