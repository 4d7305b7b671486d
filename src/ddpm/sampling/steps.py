"""What every sampler yields (``SampleStep``) and how one is drained (``run``)."""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..config import ConfigError

Tensor = torch.Tensor


@dataclass(frozen=True)
class SampleStep:
    """The state after the reverse step at paper time t: x_{t−1} and the prediction x̂₀ made at x_t."""

    t: int
    x: Tensor         # x_{t−1}; at t = 1 this is the sample x_0
    pred_x0: Tensor   # x̂₀(x_t) (Eq. 15)


def start_time(t_start: int | None, T: int) -> int:
    """The paper time a sampler starts from: T, or a given ``t_start`` in 1..T (x_T is then x_{t_start})."""
    if t_start is None:
        return T
    if isinstance(t_start, bool) or not isinstance(t_start, numbers.Integral) or not 1 <= t_start <= T:
        raise ConfigError(f"t_start must be an integer in 1..{T} (a time of this chain), got {t_start!r}")
    return int(t_start)


def time_batch(t: int, x: Tensor) -> Tensor:
    """Paper time t for every example of the batch x, shape (B,)."""
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


def run(steps: Iterator[SampleStep], progress: bool = False, total: int | None = None,
        desc: str = "sampling") -> Tensor:
    """Drain a sampler and return its final x_0."""
    final: SampleStep | None = None
    for step in tqdm(steps, total=total, desc=desc, disable=not progress, leave=False):
        final = step
    if final is None:
        raise ValueError("the sampler produced no step")
    return final.x
