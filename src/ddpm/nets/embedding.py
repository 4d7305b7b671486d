"""The Transformer sinusoidal embedding of the diffusion step (Sec. 4, Vaswani et al. 2017)."""

from __future__ import annotations

import math

import torch


def timestep_embedding(steps: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) steps → (B, dim) [sin | cos] features at geometric frequencies 1 … 1/10000 (the official layout)."""
    if steps.ndim != 1:
        raise ValueError(f"steps must be a 1-D tensor, got shape {tuple(steps.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=steps.device, dtype=torch.float32) / (half - 1))
    args = steps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 else emb
