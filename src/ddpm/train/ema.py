"""Exponential moving average of the weights (Appendix B: decay 0.9999), what the paper samples from."""

from __future__ import annotations

import torch
from torch import nn


def ema_decay_at(updates: int, decay: float, warmup_power: float | None) -> float:
    """The decay of the EMA's n-th update (n = ``updates``, from 1): warming up, or ``decay`` from the start.

    With a warm-up the decay grows as 1 − n^(−p) until it reaches ``decay``: the first update copies the
    weights and the average then spans about the last n^p updates, so the initial weights do not linger
    (with decay 0.999 from the start they still weigh 0.999^n, 37% after 1,000 steps). With p = 3/4 the
    decay 0.9999 is reached after 215k updates, so the paper's 800k-step runs end with the paper's EMA.
    """
    if updates < 1:
        raise ValueError(f"EMA updates are counted from 1, got {updates}")
    if warmup_power is None:
        return decay
    return min(decay, 1.0 - updates ** -warmup_power)


class EMA:
    """θ_ema ← decay·θ_ema + (1 − decay)·θ after every optimizer step; buffers are copied."""

    def __init__(self, model: nn.Module, decay: float, warmup_power: float | None = None) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if warmup_power is not None and not warmup_power > 0.0:
            raise ValueError(f"EMA warm-up power must be positive, got {warmup_power}")
        self.decay = decay
        self.warmup_power = warmup_power
        self.shadow = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                       for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, updates: int) -> None:
        """The ``updates``-th EMA step (1-based: optimizer steps applied so far) towards the model's weights."""
        weight = 1.0 - ema_decay_at(updates, self.decay, self.warmup_power)
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.is_floating_point():
                s.lerp_(v.detach().float(), weight)
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
