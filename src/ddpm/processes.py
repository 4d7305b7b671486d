"""This process's place among the ``torchrun`` processes, the torch device that goes with it, and the few
collectives the project uses.

torchrun describes the group in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``). One process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) needs no group at all.
Training and evaluation both enter and leave it the same way, ``with joined(device) as group``, and one rule
picks the backend from the device (``backend_for``: NCCL on CUDA, gloo otherwise).
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

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


def under_torchrun() -> bool:
    """Whether torchrun started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Whether this process is rank 0 of its group (or alone), from torchrun's ``RANK``."""
    return int(os.environ.get("RANK", "0")) == 0


def local_rank() -> int:
    """This process's index on its machine (torchrun's ``LOCAL_RANK``; 0 for one process): its GPU."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def backend_for(device: torch.device) -> str:
    """The one backend rule: NCCL between CUDA devices, gloo otherwise (the CPU, MPS)."""
    return "nccl" if device.type == "cuda" else "gloo"


def join_processes(device: torch.device, timeout_s: float | None = None) -> ProcessGroup:
    """Join the process group torchrun describes, for work on ``device``; a single process gets ``ProcessGroup()``.

    The group is created (backend ``backend_for(device)``) only if none is initialized yet; ``timeout_s=None``
    keeps torch's default timeout. Prefer ``joined``, which also leaves the group.
    """
    if not under_torchrun():
        return ProcessGroup()
    owns = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL's object collectives run on the current device: this process's
        if timeout_s is None:
            dist.init_process_group(backend=backend_for(device))
        else:
            dist.init_process_group(backend=backend_for(device), timeout=timedelta(seconds=timeout_s))
        owns = True
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), local_rank(), owns)


def leave_processes(group: ProcessGroup) -> None:
    """Tear down the process group if ``join_processes`` created it."""
    if group.owns_group and dist.is_initialized():
        dist.destroy_process_group()


DEFAULT_DEVICE = "auto"  # every command's --device: the GPU when there is one (device_for resolves it)


@contextmanager
def joined(device: torch.device, timeout_s: float | None = None) -> Iterator[ProcessGroup]:
    """torchrun's processes for work on ``device`` for the block; the group is left (destroyed when the block
    created it) however the block ends."""
    group = join_processes(device, timeout_s)
    try:
        yield group
    finally:
        leave_processes(group)


_DEVICE = re.compile(r"(auto|cpu|mps|cuda)(:(0|[1-9][0-9]{0,3}))?")


def check_device(requested: object) -> str:
    """``requested`` when it names a device this project runs on: auto, cpu, cuda, cuda:N, mps; else ConfigError.

    Only the spelling is checked (no CUDA is needed to check an option); ``device_for`` checks that it exists.
    """
    m = _DEVICE.fullmatch(requested) if isinstance(requested, str) else None
    if m is None or (m.group(1) != "cuda" and m.group(2)):
        raise ConfigError(f"--device {shown(requested)} is not a device: expected auto, cpu, cuda, cuda:N or mps")
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
        count = torch.cuda.device_count()
        if requested == "cuda":
            if local_rank >= count:  # one GPU per process: a later "invalid device ordinal" would read as a bug
                raise ConfigError(f"--device cuda: process {local_rank} of this node (LOCAL_RANK) has no GPU of its "
                                  f"own; torch sees {count} CUDA device(s): run at most {count} per node "
                                  "(torchrun --nproc_per_node)")
            return torch.device("cuda", local_rank)
        index = int(requested.split(":")[1])
        if under_torchrun():  # NCCL refuses two ranks on one GPU ("duplicate GPU"), after every rank has started
            raise ConfigError(f"--device {requested} would put every process on one GPU: under torchrun use "
                              "--device cuda (process k of a node takes cuda:k)")
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


def all_ranks_ok(ok: bool, group: ProcessGroup, device: torch.device) -> bool:
    """True only when every process says ``ok`` (so that all stop together)."""
    if not group.distributed:
        return ok
    flag = torch.tensor([1 if ok else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def all_gather_cat(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Every process's ``x`` (equal shapes) concatenated in rank order, on every process."""
    if not group.distributed:
        return x
    parts = [torch.empty_like(x) for _ in range(group.world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


# --- the machine a measurement was made on -------------------------------------------------------

def cpu_name() -> str:
    """The CPU's model name as lscpu prints it (from /proc/cpuinfo), else what the platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info() -> dict[str, str | int]:
    """What a timing depends on: the CPU, its logical cores, torch's threads and version."""
    return {"cpu": cpu_name(), "logical_cores": os.cpu_count() or 0, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__}


def machine_line() -> str:
    """Today's date and :func:`machine_info` in one line, for the head of a benchmark's table."""
    m = machine_info()
    return (f"{datetime.now(timezone.utc):%Y-%m-%d}, {m['cpu']}, {m['logical_cores']} logical cores, "
            f"{m['torch_threads']} torch thread(s), torch {m['torch']}")
