"""Splitting evaluation work over ``torchrun`` processes: each rank takes one contiguous share, rank 0 gathers.

The process group is torchrun's, entered and left as training does (``ddpm.processes.joined``, the backend
by the device); only Python objects are exchanged (``gather_object``). One process (no ``WORLD_SIZE`` or
``WORLD_SIZE=1``) needs no group at all.

Results never depend on the number of processes: every item of work (image, sample, row) is seeded by its
global index (a stream of ``ddpm.rng``), not by the rank that happens to compute it. Work that cannot be shared
(checking the output folder, reading or writing a file every rank needs) runs on rank 0 alone through
``on_main``, which hands its result, or its error, to every rank: a refusal there stops every process at once
with the same line, whatever launched them, instead of leaving the others waiting out the timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def on_main(fn: Callable[[], T_], group: ProcessGroup) -> T_:
    """``fn()`` computed on rank 0 only and handed to every rank; if it raises, every rank raises the same line.

    Rank 0 re-raises its own exception. The others raise a ``ValueError`` with its message for a user's error
    (``ValueError``, which includes the project's error classes), an ``OSError`` with the same errno and file
    for an ``OSError``, and a ``RuntimeError`` naming rank 0's for anything else: the command line reports the
    same exit code on every rank, and for a user's error the same one line. (The other ranks wait for rank 0 up
    to the group's timeout, ``EVALUATION_TIMEOUT_S`` under ``evaluation_processes``.)
    """
    if not group.distributed:
        return fn()
    box: list[Any] = [None]
    failure: Exception | None = None
    if group.is_main:
        try:
            box[0] = ("ok", fn())
        except Exception as e:  # handed on as plain values: the exception itself may not pickle
            failure = e
            if isinstance(e, OSError):
                box[0] = ("os", (e.errno, e.strerror or str(e), e.filename))
            else:
                box[0] = ("value" if isinstance(e, ValueError) else "other",
                          str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}")
    dist.broadcast_object_list(box, src=0)
    if failure is not None:
        raise failure
    kind, value = box[0]
    if kind == "ok":
        return value
    if kind == "os":
        errno_, strerror, filename = value
        raise OSError(errno_, strerror, filename) if filename is not None else OSError(errno_, strerror)
    if kind == "value":
        raise ValueError(value)
    raise RuntimeError(f"rank 0 failed: {value}")
