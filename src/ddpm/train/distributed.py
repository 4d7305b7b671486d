"""Distributed data parallel helpers: the process group from torchrun's environment, rank 0 as the writer."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> ProcessGroup:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); one process needs none.

    NCCL on CUDA, gloo on the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return ProcessGroup()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def device_for(requested: str, group_local_rank: int = 0) -> torch.device:
    """The torch device: "auto" picks the local GPU under torchrun when there is one, else the CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        return torch.device("cuda", group_local_rank)
    return torch.device(requested)


def barrier(group: ProcessGroup) -> None:
    """Wait for every process (no-op for one)."""
    if group.distributed:
        dist.barrier()


def all_ranks_ok(ok: bool, group: ProcessGroup, device: torch.device) -> bool:
    """True only when every process says ``ok`` (so that all stop together)."""
    if not group.distributed:
        return ok
    flag = torch.tensor([1 if ok else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())
