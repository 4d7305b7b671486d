"""A 2-D toy distribution: a mixture of 8 equal Gaussians on a circle (the usual "8 Gaussians").

Centers at radius 0.8 and angles 2*pi*k/8, isotropic standard deviation 0.05, so points lie in
[-1, 1]^2 except for a fraction of about 1e-4 (no clipping). The train and test sets (20,000 and
5,000 points) are fixed by ``split_seed``, a different stream of ``ddpm.rng`` for each split.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..rng import generator
from .base import PointDataset, check_split

TOY2D_MODES = 8
TOY2D_RADIUS = 0.8
TOY2D_STD = 0.05
TOY2D_SIZES = {"train": 20_000, "test": 5_000}


def toy2d_centers(device: torch.device | str = "cpu") -> Tensor:
    """The 8 mixture centers (8, 2), float32."""
    angles = torch.arange(TOY2D_MODES, dtype=torch.float64) * (2 * math.pi / TOY2D_MODES)
    centers = TOY2D_RADIUS * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return centers.to(device=device, dtype=torch.float32)


def toy2d_sample(n: int, generator: torch.Generator) -> Tensor:
    """``n`` fresh points (n, 2) float32 of the mixture, drawn from ``generator`` (on its device)."""
    device = generator.device
    comp = torch.randint(TOY2D_MODES, (n,), generator=generator, device=device)
    noise = torch.randn(n, 2, generator=generator, device=device)
    return toy2d_centers(device)[comp] + TOY2D_STD * noise


def toy2d_log_prob(x: Tensor) -> Tensor:
    """The mixture's log-density at points ``x`` (..., 2), in nats."""
    centers = toy2d_centers(x.device).to(x.dtype)
    sq = ((x.unsqueeze(-2) - centers) ** 2).sum(-1) / (2 * TOY2D_STD**2)
    log_norm = math.log(TOY2D_MODES) + math.log(2 * math.pi * TOY2D_STD**2)
    return torch.logsumexp(-sq, dim=-1) - log_norm


def toy2d_points(split: str, split_seed: int = 0) -> Tensor:
    """The fixed points of one split: stream (split_seed, "toy2d", 0) for train, (split_seed, "toy2d", 1) for test."""
    return toy2d_sample(TOY2D_SIZES[split], generator(split_seed, "toy2d", int(check_split(split) == "test")))


def toy2d_dataset(split: str, split_seed: int = 0) -> PointDataset:
    """The fixed split as a dataset of (2,) float32 points."""
    return PointDataset(toy2d_points(split, split_seed), source=f"toy2d 8 Gaussians ({split})")
