"""Reduced precision for the network alone: the schedule arithmetic around it stays float32/float64."""

from __future__ import annotations

from collections.abc import Callable

import torch

Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def in_bfloat16(network: Network) -> Network:
    """``network`` run under bfloat16 autocast on its input's device, its output cast back to float32."""

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = network(x, t)
        return out.float()

    return call
