"""Exponential moving average of the weights (Appendix B: decay 0.9999), what the paper samples from."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """θ_ema ← decay·θ_ema + (1 − decay)·θ after every optimizer step; buffers are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                       for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards the model's current weights."""
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.is_floating_point():
                s.lerp_(v.detach().float(), 1.0 - self.decay)
            else:
                s.copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, keyed like the model's state_dict."""
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the averaged weights (keys and shapes must match)."""
        if state.keys() != self.shadow.keys():
            raise ValueError(f"EMA keys differ: missing {sorted(self.shadow.keys() - state.keys())[:5]}, "
                             f"unexpected {sorted(state.keys() - self.shadow.keys())[:5]}")
        for k, v in state.items():
            self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model``."""
        model.load_state_dict({k: v.to(dtype=model.state_dict()[k].dtype) for k, v in self.shadow.items()})
