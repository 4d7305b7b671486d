"""Reduced precision for the network alone: the schedule arithmetic around it stays float32/float64."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Network = Callable[..., torch.Tensor]  # network(x, t) or, class-conditional, network(x, t, y=labels)


def in_bfloat16(network: Network) -> Network:
    """``network`` run under bfloat16 autocast on its input's device, its output cast back to float32."""

    def call(x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = network(x, t, **kwargs)
        return out.float()

    return call
