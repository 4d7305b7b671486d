"""Splitting evaluation work over ``torchrun`` processes: each rank takes one contiguous share, rank 0 gathers.

The process group is torchrun's, joined through ``ddpm.processes``.
Only Python objects are exchanged (``gather_object``), so the group always uses gloo, also when the
networks run on CUDA. One process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) needs no group at all.

Results never depend on the number of processes: every item of work (image, sample, row) is seeded by its
global index (``ddpm.sampling.sample_generators``), not by the rank that happens to compute it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch.distributed as dist

from ..processes import ProcessGroup, join_processes

T_ = TypeVar("T_")


def join_evaluation() -> ProcessGroup:
    """Join torchrun's process group for evaluation: always gloo (only Python objects travel), long timeout."""
    return join_processes("gloo", timeout_s=3600.0)


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


def broadcast_from_main(obj: Any, group: ProcessGroup) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not group.distributed:
        return obj
    box = [obj if group.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
