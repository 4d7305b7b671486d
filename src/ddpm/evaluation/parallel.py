"""Splitting evaluation work over ``torchrun`` processes: each rank takes one contiguous share, rank 0 gathers.

The process group is torchrun's, entered and left as training does (``ddpm.processes.joined``, the backend
by the device); only Python objects are exchanged (``gather_object``). One process (no ``WORLD_SIZE`` or
``WORLD_SIZE=1``) needs no group at all.

Results never depend on the number of processes: every item of work (image, sample, row) is seeded by its
global index (a stream of ``ddpm.rng``), not by the rank that happens to compute it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ..processes import ProcessGroup, joined

T_ = TypeVar("T_")
EVALUATION_TIMEOUT_S = 3600.0  # the other ranks may wait long for rank 0 (statistics, figures, files)


def evaluation_processes(device: torch.device) -> AbstractContextManager[ProcessGroup]:
    """torchrun's processes for an evaluation on ``device`` for a ``with`` block, with a long timeout."""
    return joined(device, EVALUATION_TIMEOUT_S)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share of n items; shares differ in size by at most one."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(items: Sequence[T_], group: ProcessGroup) -> Sequence[T_]:
    """This rank's contiguous share of ``items``."""
    start, stop = shard_bounds(len(items), group.rank, group.world_size)
    return items[start:stop]


def gather_to_main(obj: Any, group: ProcessGroup) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0, ordered by rank; None on the other ranks."""
    if not group.distributed:
        return [obj]
    out: list[Any] | None = [None] * group.world_size if group.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out
