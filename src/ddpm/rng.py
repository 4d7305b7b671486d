"""Every seed rule of the project, and the noise sources the mathematics draws from.

One rule: a generator is a function of (seed, purpose, index…) (``seed_for``). The purposes are the closed
list ``PURPOSES``; an index says which one of many streams of a purpose (sample i, training step k, rank r).
Results that must not depend on batching or on the number of processes take one stream per item.

The mathematics (``ddpm.diffusion``, ``ddpm.sampling``) never derives a seed: it takes a ``Noise`` source —
``GlobalNoise`` (one generator for the whole batch), ``PerItemNoise`` (one generator per row) or ``SharedNoise``
(one draw shared by every row) — and its callers build the source from (seed, purpose, index…).
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

import numpy as np
import torch

from .config import MAX_SEED

Tensor = torch.Tensor

Purpose = Literal[
    "weights",          # the initial weights (torch's global RNG, the same in every process)
    "dropout",          # dropout inside the network: index (rank,), or (rank, step) on a resume without saved state
    "data-order",       # the training data order: index (epoch,)
    "training-noise",   # t and ε of the global batch of a training step: index (step,)
    "flip",             # random flips of a training step, one coin per example of the global batch: index (step,)
    "loader",           # the DataLoader's own generator (its worker seeds)
    "grid",             # the trainer's periodic sample grid
    "sample",           # sample i of a run: x_T and every step's noise, index (i,)
    "nll",              # the noise of the bound (Eq. 5) of test image i: index (i,)
    "progressive",      # Fig. 6, row i: index (i,)
    "reconstruction",   # Fig. 7, test image i at time t: index (i, t) its frozen x_t, (i, t, m) its sample m
    "interpolation",    # Sec. 4.4, the row of test images a, b at time t: index (a, b, t)
    "pairs",            # the random image pairs of an interpolation grid
    "split",            # the fixed held-out split of a dataset without one
    "toy2d",            # the fixed points of the toy 2-D data: index (0,) train, (1,) test
    "analytic-gamma",   # the Monte-Carlo draws of Analytic-DPM's Γ estimate: index (i,), training image i
    "classifier",       # the digits classifier: weights, data order and shifts
    "digits-reference",  # the reference and real images drawn by the digits metric; index (k,): real draw k
    "inception-score",  # the split permutation inside torchmetrics' Inception Score
    "label-dropout",    # which labels of a training step's global batch become "no class": index (step,)
]  # new purposes go last: a purpose's position is part of every seed (seed_for)
PURPOSES: tuple[str, ...] = get_args(Purpose)
_MAX_INDEX = 2**64 - 1  # an index is encoded in 8 bytes


def seed_for(seed: int, purpose: Purpose, *index: int) -> int:
    """The 63-bit seed of stream (seed, purpose, index…): BLAKE2b of an unambiguous encoding of the three.

    The encoding is injective — the purpose's position in ``PURPOSES`` (one byte), the seed in 8 bytes, the
    number of indices (one byte), then each index in 8 bytes — so two different tuples are two different
    messages, and a cryptographic hash gives two different messages one 63-bit value with probability 2⁻⁶³:
    among the ~10⁶ streams of a large run, about 10⁻⁷ for any pair to collide. No arithmetic mixes a seed,
    a purpose or an index into another (the old linear mixes collided: ``seed + 1 + rank`` made seed 0 rank 1
    equal seed 1 rank 0).
    """
    head = _seed_and_purpose(seed, purpose)
    if len(index) > 255:
        raise ValueError(f"at most 255 indices, got {len(index)}")
    words = [_check_int("index", i, _MAX_INDEX) for i in index]
    message = head + bytes([len(words)]) + b"".join(w.to_bytes(8, "little") for w in words)
    digest = hashlib.blake2b(message, digest_size=8, person=b"ddpm.rng").digest()
    return int.from_bytes(digest, "little") >> 1  # 63 bits: non-negative for torch and numpy alike


def generator(seed: int, purpose: Purpose, *index: int) -> torch.Generator:
    """A CPU ``torch.Generator`` for stream (seed, purpose, index…) (``seed_for``)."""
    return torch.Generator().manual_seed(seed_for(seed, purpose, *index))


def uniform_of_name(seed: int, purpose: Purpose, name: bytes) -> float:
    """A number in [0, 1) that is a function of (seed, purpose, name) alone: the item named ``name`` draws it
    whatever other items exist (e.g. whether a file of a folder is held out, ``ddpm.data.base``).

    BLAKE2b (personalised apart from ``seed_for``'s streams) of the purpose's position, the seed in 8 bytes and
    then the name's bytes — fixed-length fields first, so the encoding is injective —, its first 53 bits read as
    a binary fraction: exactly uniform on the multiples of 2⁻⁵³.
    """
    message = _seed_and_purpose(seed, purpose) + bytes(name)
    digest = hashlib.blake2b(message, digest_size=8, person=b"ddpm.name").digest()
    return (int.from_bytes(digest, "little") >> 11) / 2.0**53


def numpy_rng(seed: int, purpose: Purpose, *index: int) -> np.random.Generator:
    """A numpy ``Generator`` for stream (seed, purpose, index…) (``seed_for``)."""
    return np.random.default_rng(seed_for(seed, purpose, *index))


def seed_torch(seed: int, purpose: Purpose, *index: int) -> None:
    """Seed torch's global RNG with stream (seed, purpose, index…): for code that draws from it (weight
    initialisation, dropout, torchmetrics)."""
    torch.manual_seed(seed_for(seed, purpose, *index))


def _seed_and_purpose(seed: int, purpose: Purpose) -> bytes:
    """The fixed-length start of every hashed message: the purpose's position in ``PURPOSES`` (one byte), then
    the seed in 8 bytes; a bad seed or an unknown purpose is a ValueError."""
    s = _check_int("seed", seed, MAX_SEED)
    if purpose not in PURPOSES:
        raise ValueError(f"unknown randomness purpose {purpose!r}; expected one of {', '.join(PURPOSES)}")
    return bytes([PURPOSES.index(purpose)]) + s.to_bytes(8, "little")


def _check_int(name: str, value: object, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= int(value) <= hi:
        raise ValueError(f"a randomness {name} must be an integer in 0..{hi}, got {value!r}")
    return int(value)


# --- noise sources -----------------------------------------------------------------------------

class Noise(Protocol):
    """A source of standard normal noise for a batch, the only randomness the mathematics takes."""

    def randn(self, shape: tuple[int, ...], device: torch.device | str = "cpu") -> Tensor:
        """ε ~ N(0, I) of ``shape`` (batch first) on ``device``."""
        ...


@dataclass(frozen=True)
class GlobalNoise:
    """One generator for the whole batch (None: torch's global RNG)."""

    generator: torch.Generator | None = None

    def randn(self, shape: tuple[int, ...], device: torch.device | str = "cpu") -> Tensor:
        """The batch drawn at once; on the generator's device when that is another one, then moved."""
        g = self.generator
        if g is not None and g.device.type != torch.device(device).type:
            return torch.randn(shape, generator=g).to(device)
        return torch.randn(shape, generator=g, device=device)


@dataclass(frozen=True)
class PerItemNoise:
    """One generator per row of the batch: a row's noise does not depend on the batch it is drawn in."""

    generators: tuple[torch.Generator, ...]

    def randn(self, shape: tuple[int, ...], device: torch.device | str = "cpu") -> Tensor:
        """Row i drawn from generator i."""
        if len(self.generators) != shape[0]:
            raise ValueError(f"got {len(self.generators)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(shape[1:], generator=g) for g in self.generators]).to(device)


@dataclass(frozen=True)
class SharedNoise:
    """One draw of ``source`` (a batch of one) shared by every row (e.g. the λ grid of an interpolation)."""

    source: Noise

    def randn(self, shape: tuple[int, ...], device: torch.device | str = "cpu") -> Tensor:
        """The same noise in every row."""
        return self.source.randn((1, *shape[1:]), device).expand(shape).contiguous()


GLOBAL_NOISE = GlobalNoise()  # torch's global RNG: the default of the samplers, for interactive use


def per_item(seed: int, purpose: Purpose, indices: Iterable[int]) -> PerItemNoise:
    """Item i of ``indices`` drawn from stream (seed, purpose, i): the same whatever the batch or the shard."""
    return PerItemNoise(tuple(generator(seed, purpose, i) for i in indices))
