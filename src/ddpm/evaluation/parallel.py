"""Splitting evaluation work over ``torchrun`` processes: each rank takes one contiguous share, rank 0 gathers.

The process group is torchrun's (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``).
Only Python objects are exchanged (``gather_object``), so the group always uses gloo, also when the
networks run on CUDA. One process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) needs no group at all.

Results never depend on the number of processes: every item of work (image, sample, row) is seeded by its
global index (``ddpm.sampling.sample_generators``), not by the rank that happens to compute it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T_ = TypeVar("T_")


@dataclass(frozen=True)
class Workers:
    """This process's place among the evaluation processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # whether this module created the process group (and so tears it down)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_workers(timeout_s: float = 3600.0) -> Workers:
    """Join the process group torchrun describes (gloo); a single process gets ``Workers()``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Workers()
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
        owns = True
    return Workers(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)


def close_workers(workers: Workers) -> None:
    """Tear down the process group if ``init_workers`` created it."""
    if workers.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def device_for(requested: str, workers: Workers) -> torch.device:
    """The torch device: ``cuda`` is this process's local GPU under torchrun; anything else as given."""
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but torch sees no CUDA device")
        return torch.device("cuda", workers.local_rank)
    return torch.device(requested)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share of n items; shares differ in size by at most one."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(items: Sequence[T_], workers: Workers) -> Sequence[T_]:
    """This rank's contiguous share of ``items``."""
    start, stop = shard_bounds(len(items), workers.rank, workers.world_size)
    return items[start:stop]


def gather_to_main(obj: Any, workers: Workers) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0, ordered by rank; None on the other ranks."""
    if not workers.distributed:
        return [obj]
    out: list[Any] | None = [None] * workers.world_size if workers.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any, workers: Workers) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not workers.distributed:
        return obj
    box = [obj if workers.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(workers: Workers) -> None:
    """Wait for every process (no-op for one)."""
    if workers.distributed:
        dist.barrier()
