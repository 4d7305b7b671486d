"""Networks: the paper's U-Net and a toy MLP, built from their configs."""

from __future__ import annotations

from torch import nn

from ..config import MLPConfig, ModelConfig, UNetConfig


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network a model config describes."""
    if isinstance(cfg, UNetConfig):
        from .unet import UNet

        return UNet(cfg)
    if isinstance(cfg, MLPConfig):
        from .mlp import MLP

        return MLP(cfg)
    raise ValueError(f"unknown model config {cfg!r}")


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
