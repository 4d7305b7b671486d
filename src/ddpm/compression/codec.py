"""Compress a set of images with a trained model into one file, and back, exactly.

Images are coded in batches side by side (one chain each, one network call per step for the batch),
all on one ANS stack. Each chain borrows bits before it returns them (about two latents' worth: x_1 and
x_2 are popped before anything costly is pushed), so the stack starts with seeded random words for the
first image; after that, batches grow only as fast as the images already coded can lend their bits
(``batch_plan``), which keeps the start-up cost to about one image's borrowing instead of a batch's.
Words the coder never reached are trimmed from the file, and the receiver checks that the words it ends
with are exactly the seeded ones left — any difference in network outputs between the two sides shows
up there.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import ConfigError, check_int
from ..evaluation.common import is_image_model
from ..loading import LoadedModel
from ..sampling.analytic import AnalyticDiffusion, VarianceChoice
from ..schedules import spaced_steps
from .chain import ChainCode, decode_chain, encode_chain, latent_grid
from .container import (
    BITS_PER_IMAGE,
    GRID_LOG2_RANGE,
    MAX_BATCH,
    MAX_THREADS,
    NO_GAMMA,
    VARIANCES,
    WINDOW_RANGE,
    Header,
    pack,
    unpack,
)
from .errors import CompressionError
from .stack import Stack

# The initial bits are part of the file format (a decoder regenerates them to check the stack's bottom), so they
# keep numpy's default_rng(0x0DD9) and stay outside ddpm.rng: a new seed rule must not break existing files.
_INITIAL_SEED = 0x0DD9
PREVIEW_IMAGES = 100  # x̂₀ previews keep the first 100 images (one grid)
_MARGIN_WORDS = 2  # words kept below the lowest point the coder reached
_MAX_GROWTH = 4  # the seeded words grow ×4 at most this many times (×256 in all): a decoder checks the count


@dataclass(frozen=True)
class CodecOptions:
    """How the sender codes; everything here is recorded in the file."""

    steps: int | None = None     # chain length: None = all T steps, fewer = evenly respaced
    batch_size: int = 8          # most images coded side by side (batches ramp up to it, see batch_plan)
    grid_log2: int = 0           # latent grid δ_t = 2^grid_log2 × the narrowest std coding x_t
    window: int = 8              # coding windows of ± window standard deviations
    clip_denoised: bool = True   # clip x̂₀ inside p_θ, as ``ddpm nll`` does
    variance: VarianceChoice = "model"  # "analytic": Analytic-DPM's σ*² from a Γ estimate (``gamma``)

    def __post_init__(self) -> None:
        # named as `ddpm compress` spells them (and as fields, where they differ); the ranges are what the
        # file's header records. steps=0 used to mean "all T" (`0 or T`): refused, as is anything < 1.
        checks = [("--steps", self.steps, 1, None), ("--batch-size (batch_size)", self.batch_size, 1, MAX_BATCH),
                  ("--grid-log2 (grid_log2)", self.grid_log2, *GRID_LOG2_RANGE),
                  ("--window", self.window, *WINDOW_RANGE)]
        try:
            for name, value, lo, hi in checks:
                if value is not None or name != "--steps":  # steps <= T once the model is known (compress)
                    check_int(name, value, lo, hi)
        except ConfigError as e:
            raise CompressionError(str(e)) from None
        if not isinstance(self.clip_denoised, bool):
            raise CompressionError(f"clip_denoised must be true or false, got {self.clip_denoised!r}")
        if self.variance not in VARIANCES:
            raise CompressionError(f"--variance must be one of {', '.join(VARIANCES)}, got {self.variance!r}")


@dataclass(frozen=True)
class Compressed:
    """A compressed file's bytes and how they came about."""

    data: bytes
    header: Header
    seconds: float

    @property
    def bits_per_dim(self) -> float:
        """The whole file (header, payload, checksum) in bits per pixel value."""
        h = self.header
        return 8 * len(self.data) / (h.count * h.channels * h.height * h.width)

    @property
    def payload_bits_per_dim(self) -> float:
        h = self.header
        return 32 * h.payload_words / (h.count * h.channels * h.height * h.width)

    @property
    def initial_bits_per_dim(self) -> float:
        """The random words the sender borrowed (part of the payload): the bits-back start-up cost."""
        h = self.header
        return 32 * (h.initial_words - h.trimmed_words) / (h.count * h.channels * h.height * h.width)


@dataclass
class Decompressed:
    """Decoded images (integer levels) and x̂₀ previews taken on the way (Fig. 6)."""

    images: np.ndarray                     # (N, C, H, W) uint8 levels 0..L−1
    header: Header
    seconds: float
    previews: dict[int, np.ndarray] = field(default_factory=dict)  # t (full chain) -> x̂₀ of the first
                                                                    # PREVIEW_IMAGES images (n, C, H, W)


def model_hash(model: LoadedModel) -> bytes:
    """16 bytes identifying the network weights used and the diffusion they define."""
    h = hashlib.sha256()
    config = model.config.to_dict()
    # the model section as ddpm 0.1 stored it (learn_sigma beside the architecture), so that a file compressed
    # before learn_sigma lived on the diffusion alone still names the same model
    legacy_model = {**config["model"], "learn_sigma": model.config.diffusion.learn_sigma}
    if legacy_model.get("num_classes", 0) is None:
        del legacy_model["num_classes"]  # unconditional: the hash of a model from before class conditioning
    h.update(json.dumps({"diffusion": config["diffusion"], "model": legacy_model}, sort_keys=True).encode())
    for name, tensor in sorted(model.net.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()[:16]


def image_shape(model: LoadedModel) -> tuple[int, int, int]:
    """(C, H, W) of the images the model codes."""
    if not is_image_model(model.config):
        raise CompressionError("compression codes images: this checkpoint's model makes 2-D points (toy2d)")
    return model.sample_shape  # type: ignore[return-value]


def gamma_hash(gamma: torch.Tensor) -> bytes:
    """16 bytes identifying a Γ estimate (its float64 values), recorded in a file coded with it."""
    values = gamma.detach().to("cpu", torch.float64).contiguous()
    return hashlib.sha256(values.numpy().tobytes()).digest()[:16]


def chain_code(model: LoadedModel, steps: int, grid_log2: int, window: int, clip_denoised: bool,
               gamma: torch.Tensor | None = None) -> ChainCode:
    """The chain both sides code with: the model's T steps, or ``steps`` of them evenly respaced; with ``gamma``
    the reverse variance is Analytic-DPM's σ*² on that chain (the bound of ``ddpm nll --variance analytic``)."""
    # window and grid_log2 were checked by CodecOptions (sender) or container.check_header (receiver)
    base = model.diffusion if gamma is None else AnalyticDiffusion(model.diffusion, gamma)
    diffusion = base.with_steps(steps)  # the one respacing rule (GaussianDiffusion.with_steps)
    return ChainCode(diffusion, latent_grid(diffusion.schedule, 2.0**grid_log2), float(window), clip_denoised)


def batch_plan(count: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, size) of each batch: sizes ramp up as max(1, done // 2) until ``batch_size``."""
    plan, done = [], 0
    while done < count:
        n = min(batch_size, max(1, done // 2), count - done)
        plan.append((done, n))
        done += n
    return plan


def first_initial_words(dims: int, grid_log2: int) -> int:
    """Seeded words the first attempt starts with: two latents of one image, ≈ log2(√(2πe)/ratio) bits each."""
    bits = 2 * (8 + max(0, -grid_log2))
    return math.ceil(dims * bits / 32) + 64


def initial_words(n: int) -> np.ndarray:
    """The seeded random words a stack starts with (nonzero, so the coder reads them as given)."""
    return np.random.default_rng(_INITIAL_SEED).integers(1, 2**32, size=n, dtype=np.uint32)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch threads (network outputs must match the sender's bit for bit)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_images(images: np.ndarray, shape: tuple[int, int, int], levels: int) -> np.ndarray:
    """``images`` as uint8 (N, C, H, W) levels, or a CompressionError naming what does not fit the model."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != shape:
        raise CompressionError(f"images have shape {images.shape[1:] if images.ndim == 4 else images.shape}; "
                               f"this model codes (N, {', '.join(map(str, shape))})")
    if images.shape[0] == 0:
        raise CompressionError("no images to compress")
    if not np.issubdtype(images.dtype, np.integer) or images.min() < 0 or images.max() >= levels:
        raise CompressionError(f"pixel levels must be integers in 0..{levels - 1} (the model's {levels} levels)")
    return images.astype(np.uint8)


@torch.inference_mode()
def compress(model: LoadedModel, images: np.ndarray, options: CodecOptions = CodecOptions(),
             progress: bool = False, gamma: torch.Tensor | None = None) -> Compressed:
    """Code ``images`` (integer levels, (N, C, H, W)) into a self-describing file's bytes.

    ``gamma``: the model's Γ estimate (``ddpm analytic-variance``), needed by ``options.variance == "analytic"``.
    """
    tick = time.perf_counter()
    shape, levels = image_shape(model), model.diffusion.levels
    images = check_images(images, shape, levels)
    steps = model.diffusion.T if options.steps is None else options.steps
    if not 1 <= steps <= model.diffusion.T:
        raise CompressionError(f"--steps must be in 1..{model.diffusion.T}, got {steps}")
    if (options.variance == "analytic") != (gamma is not None):
        raise CompressionError("--variance analytic needs the model's Γ estimate (ddpm analytic-variance), and "
                               "only it takes one")
    code = chain_code(model, steps, options.grid_log2, options.window, options.clip_denoised, gamma)
    dims = int(np.prod(shape))
    plan = batch_plan(len(images), options.batch_size)
    threads = torch.get_num_threads()
    if threads > MAX_THREADS:  # the receiver must run with the same number, and refuses more
        raise CompressionError(f"torch runs {threads} threads; a file records at most {MAX_THREADS}: "
                               "torch.set_num_threads(…) first")
    # every file holds >= BITS_PER_IMAGE payload bits per image, so that a receiver can bound the count it is told
    need = math.ceil(len(images) * BITS_PER_IMAGE / 32)
    for growth in range(_MAX_GROWTH + 1):
        n_init = first_initial_words(dims, options.grid_log2) * 4**growth
        stack = Stack(initial_words(n_init))
        bar = tqdm(total=len(plan) * code.T, desc="compress", unit="step", disable=not progress, leave=False)
        for start, n in plan:
            encode_chain(stack, model, code, images[start:start + n], bar.update)
        bar.close()
        trimmed = min(stack.low_water - _MARGIN_WORDS, stack.num_words - need)
        if trimmed >= 0:
            break
        # the first batch borrowed more than expected (or nearly nothing was coded): again with more words
    else:
        raise CompressionError(f"the images borrowed more than {n_init} seeded words (×{4**_MAX_GROWTH} the "
                               "usual): the model predicts them implausibly badly or implausibly well")
    payload = stack.words()[trimmed:]
    header = Header(model_hash(model), len(images), *shape, levels, steps, options.batch_size, options.grid_log2,
                    options.window, threads, options.clip_denoised, n_init, trimmed, int(payload.size),
                    VARIANCES.index(options.variance), NO_GAMMA if gamma is None else gamma_hash(gamma))
    return Compressed(pack(header, payload), header, time.perf_counter() - tick)


def preview_times(model: LoadedModel, steps: int, previews: int) -> dict[int, int]:
    """The ``previews`` steps of a ``steps``-step chain where x̂₀ is shown: chain t -> the original chain's t (its name).

    Empty for ``previews`` = 0, or for a chain longer than the model's (which ``decompress`` refuses).
    """
    if previews <= 0 or not 1 <= steps <= model.diffusion.T:
        return {}
    diffusion = model.diffusion.with_steps(steps)  # the respacing rule of chain_code; the variance plays no part
    return {t: int(diffusion.schedule.timesteps[t - 1]) + 1 for t in spaced_steps(steps, min(previews, steps))}


@torch.inference_mode()
def decompress(model: LoadedModel, data: bytes, previews: int = 0, progress: bool = False,
               name: str = "the file", gamma: torch.Tensor | None = None) -> Decompressed:
    """Decode a file's bytes with the model it was made with; ``previews`` x̂₀ snapshots along the way.

    A file coded with Analytic-DPM's variance (``header.variance``) needs the same Γ estimate as ``gamma``.
    """
    tick = time.perf_counter()
    header, payload = unpack(data, name)  # every field in range and consistent with the payload's size
    # then against the model, before anything costly (hashing the weights, tables, decoding)
    shape = image_shape(model)
    if (header.channels, header.height, header.width) != shape or header.levels != model.diffusion.levels:
        raise CompressionError(f"{name} holds {header.channels}×{header.height}×{header.width} images at "
                               f"{header.levels} levels; this model codes {'×'.join(map(str, shape))} at "
                               f"{model.diffusion.levels}")
    if header.steps > model.diffusion.T:
        raise CompressionError(f"{name} has header field steps={header.steps}; this model's chain has "
                               f"T = {model.diffusion.T} steps")
    first = first_initial_words(int(np.prod(shape)), header.grid_log2)
    allowed = [first * 4**g for g in range(_MAX_GROWTH + 1)]
    if header.initial_words not in allowed:  # what compress can have written: bounds the seeded words made below
        raise CompressionError(f"{name} has header field initial_words={header.initial_words}; a sender of "
                               f"these images starts with one of {allowed}")
    if header.trimmed_words > header.initial_words - _MARGIN_WORDS:
        raise CompressionError(f"{name} has header field trimmed_words={header.trimmed_words}; at most "
                               f"initial_words − {_MARGIN_WORDS} = {header.initial_words - _MARGIN_WORDS}")
    ours = model_hash(model)
    if header.model_hash != ours:
        raise CompressionError(f"{name} was made with a different model (hash {header.model_hash.hex()}, this "
                               f"checkpoint's is {ours.hex()}): use the checkpoint and --weights "
                               "it was compressed with")
    if VARIANCES[header.variance] == "analytic":
        if gamma is None:
            raise CompressionError(f"{name} was coded with Analytic-DPM's variance: it needs the model's Γ estimate "
                                   "(stored beside the checkpoint by ddpm analytic-variance)")
        if gamma_hash(gamma) != header.gamma_hash:
            raise CompressionError(f"{name} was coded with another Γ estimate (hash {header.gamma_hash.hex()}, "
                                   f"this one's is {gamma_hash(gamma).hex()}): decode with the estimate it was "
                                   "compressed with")
    else:
        gamma = None  # the model's own variance: an estimate, if given, plays no part
    code = chain_code(model, header.steps, header.grid_log2, header.window, header.clip_denoised, gamma)
    names = preview_times(model, header.steps, previews)
    preview_ts = set(names)
    shown = min(header.count, PREVIEW_IMAGES)  # previews are grids of at most this many: memory stays bounded
    shots: dict[int, np.ndarray] = {t: np.zeros((shown, *shape), np.float32) for t in preview_ts}
    out = np.zeros((header.count, *shape), dtype=np.uint8)
    plan = batch_plan(header.count, header.batch)
    try:
        stack = Stack(payload)
    except CompressionError:
        raise
    except ValueError as e:  # constriction: "ANS compressed data never ends in a zero word"
        raise CompressionError(f"{name} has a payload that is no ANS stack ({e})") from None
    bar = tqdm(total=len(plan) * code.T, desc="decompress", unit="step", disable=not progress, leave=False)
    astray = (f"{name} did not decode to a verified end: the network's outputs differ from the sender's "
              "(another machine, torch build or thread count?) or the file was altered")
    try:
        with torch_threads(header.threads):
            for start, n in reversed(plan):  # a stack: the last batch pushed comes off first
                def on_step(t: int, pred_x0: torch.Tensor, start: int = start, n: int = n) -> None:
                    bar.update(1)
                    if t in shots and start < shown:
                        shots[t][start:min(start + n, shown)] = pred_x0[:shown - start].float().numpy()

                out[start:start + n] = decode_chain(stack, model, code, (n, *shape), on_step)
    except (CompressionError, ValueError, OverflowError) as e:
        raise CompressionError(f"{astray} ({e})") from e
    finally:
        bar.close()
    left = stack.words()
    if left.size != header.initial_words - header.trimmed_words or \
            not np.array_equal(left, initial_words(header.initial_words)[header.trimmed_words:]):
        raise CompressionError(astray)
    return Decompressed(out, header, time.perf_counter() - tick,
                        {names[t]: shots[t] for t in sorted(shots, reverse=True)})
