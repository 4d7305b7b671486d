"""Distributed data parallel helpers: joining torchrun's process group (``ddpm.processes``), rank 0 as the writer."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..processes import ProcessGroup, join_processes


def join_training(device: torch.device) -> ProcessGroup:
    """Join the process group torchrun describes; one process needs none. NCCL on CUDA, gloo on the CPU."""
    return join_processes("nccl" if device.type == "cuda" else "gloo")


def all_ranks_ok(ok: bool, group: ProcessGroup, device: torch.device) -> bool:
    """True only when every process says ``ok`` (so that all stop together)."""
    if not group.distributed:
        return ok
    flag = torch.tensor([1 if ok else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())
