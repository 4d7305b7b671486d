"""This process's place among the ``torchrun`` processes, and the torch device that goes with it.

torchrun describes the group in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``). One process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) needs no group at all.
Training and evaluation both join through here; each picks its own backend.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .config import ConfigError, shown


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among the processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # whether join_processes created the process group (and so tears it down)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def join_processes(backend: str, timeout_s: float | None = None) -> ProcessGroup:
    """Join the process group torchrun describes; a single process gets ``ProcessGroup()``.

    The group is created (with ``backend``, e.g. "nccl" or "gloo") only if none is initialized yet;
    ``timeout_s=None`` keeps torch's default timeout.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return ProcessGroup()
    owns = False
    if not dist.is_initialized():
        if timeout_s is None:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        owns = True
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)


def leave_processes(group: ProcessGroup) -> None:
    """Tear down the process group if ``join_processes`` created it."""
    if group.owns_group and dist.is_initialized():
        dist.destroy_process_group()


DEFAULT_DEVICE = "auto"  # every command's --device: the GPU when there is one (device_for resolves it)
_DEVICE = re.compile(r"(auto|cpu|mps|cuda)(:(0|[1-9][0-9]{0,3}))?")


def check_device(requested: object, allow_auto: bool = True) -> str:
    """``requested`` when it names a device this project runs on: cpu, cuda, cuda:N, mps (and auto); else ConfigError.

    Only the spelling is checked (no CUDA is needed to check an option); ``device_for`` checks that it exists.
    """
    m = _DEVICE.fullmatch(requested) if isinstance(requested, str) else None
    if m is None or (m.group(1) != "cuda" and m.group(2)) or (m.group(1) == "auto" and not allow_auto):
        expected = "auto, cpu, cuda, cuda:N or mps" if allow_auto else "cpu, cuda, cuda:N or mps"
        raise ConfigError(f"--device {shown(requested)} is not a device: expected {expected}")
    return requested  # type: ignore[return-value]


def device_for(requested: str, local_rank: int = 0) -> torch.device:
    """The torch device: "auto" is the GPU when there is one, else the CPU; "cuda" is this process's GPU.

    Under torchrun "cuda" means ``cuda:LOCAL_RANK``; "cuda:N" and "mps" must exist. Anything else is refused
    with a ConfigError naming --device, before any model is loaded or anything is written.
    """
    check_device(requested)
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {requested} was asked for but torch sees no CUDA device")
        if requested == "cuda":
            return torch.device("cuda", local_rank)
        index, count = int(requested.split(":")[1]), torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"--device {requested}: torch sees {count} CUDA device(s), cuda:0..cuda:{count - 1}")
        return torch.device("cuda", index)
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for but torch sees no MPS device")
    return torch.device(requested)


def barrier(group: ProcessGroup) -> None:
    """Wait for every process (no-op for one)."""
    if group.distributed:
        dist.barrier()
