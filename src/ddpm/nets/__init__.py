"""Networks: the paper's U-Net and a toy MLP, built from their configs."""

from __future__ import annotations

from torch import nn

from ..config import MLPConfig, ModelConfig, RunConfig, UNetConfig


def build_model(cfg: ModelConfig, out_channels: int | None = None) -> nn.Module:
    """The network a model config describes, with ``out_channels`` outputs (default: its input channels)."""
    if isinstance(cfg, UNetConfig):
        from .unet import UNet

        return UNet(cfg, out_channels)
    if isinstance(cfg, MLPConfig):
        from .mlp import MLP

        return MLP(cfg, out_channels)
    raise ValueError(f"unknown model config {cfg!r}")


def network_for(cfg: RunConfig) -> nn.Module:
    """A run's network: its model config, with Σ_θ outputs when the run's diffusion learns Σ."""
    return build_model(cfg.model, cfg.network_out_channels)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
