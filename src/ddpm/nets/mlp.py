"""A small time-conditioned MLP for 2-D toy data (the `toy2d` preset)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import MLPConfig
from .embedding import timestep_embedding


class MLP(nn.Module):
    """ε_θ(x_t, t) for vectors: [x_t, emb(t)] through ``depth`` SiLU layers, the step re-added at each."""

    def __init__(self, cfg: MLPConfig, out_channels: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = None  # unconditional
        self.out_channels = cfg.dim if out_channels is None else out_channels
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_embed_dim, cfg.hidden), nn.SiLU(),
                                      nn.Linear(cfg.hidden, cfg.hidden))
        self.inp = nn.Linear(cfg.dim, cfg.hidden)
        self.blocks = nn.ModuleList(nn.Linear(cfg.hidden, cfg.hidden) for _ in range(cfg.depth))
        self.out = nn.Linear(cfg.hidden, self.out_channels)

    def forward(self, x: torch.Tensor, steps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(B, dim) inputs and (B,) 0-indexed steps → (B, out_channels); the MLP takes no class labels ``y``."""
        if y is not None:
            raise ValueError("the toy MLP is unconditional: it takes no class labels y")
        if x.ndim != 2 or x.shape[1] != self.cfg.dim:
            raise ValueError(f"MLP expects inputs of shape (B, {self.cfg.dim}), got {tuple(x.shape)}")
        emb = self.time_mlp(timestep_embedding(steps, self.cfg.time_embed_dim))
        h = self.inp(x)
        for layer in self.blocks:
            h = h + layer(nn.functional.silu(h + emb))  # residual, so depth does not hurt optimization
        return self.out(nn.functional.silu(h))
