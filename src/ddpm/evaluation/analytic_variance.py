"""The stored Analytic-DPM estimate: Γ_t per original step, beside the checkpoint it was computed for.

``<checkpoint>.analytic-<weights>.safetensors`` holds one float64 tensor ``gamma`` (T,), and
``<checkpoint>.analytic-<weights>.json`` records the model hash (``ddpm.compression.model_hash``: weights and
diffusion), the weights used, the number of training images, the seed and the sha256 of the tensor file. The
tensor file is written first and the JSON last (both atomically), so a crash between the two leaves a JSON whose
sha256 does not match: refused, never half-used. Both files come from anyone, so both are read bounded.

A class-conditional model's file holds Γ of the conditional ε_θ(x_t, t, y), each training image with its own
label, as ``gamma`` — what sampling a class and the conditional bound use (guided samplers too: Bao et al.'s
theory covers w = 0, the conditional model, and no guided ε̃ has an optimal variance of its own) — and, when label
dropout trained its "no class" input, Γ of ε_θ(x_t, t, ∅) as ``gamma_null``, for unconditional sampling. Both
tables come from the same images and noise.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from ..checkpoint import CheckpointError, inspect_checkpoint, read_json, read_safetensors_header, save_safetensors
from ..compression.codec import model_hash
from ..config import check_int, check_seed
from ..loading import LoadedModel, Weights, load_model
from ..outputs import atomic_file, write_text
from ..processes import DEFAULT_DEVICE, ProcessGroup, check_device, device_for, local_rank
from ..rng import per_item
from ..sampling.analytic import AnalyticDiffusion, gamma_from_sums, gamma_sums
from .common import DataChoice, batched, check_model_classes, load_split, stack_items
from .parallel import evaluation_processes, gather_to_main, on_main, shard

Tensor = torch.Tensor
FORMAT = "ddpm-analytic-gamma"
VERSION = 1
MAX_ESTIMATE_BYTES = 1 << 20  # T ≤ MAX_T float64 values and a small header; anything larger is not ours
DEFAULT_IMAGES = 1000  # Γ_t is a mean of N terms in [0, ~1]: its Monte-Carlo error falls as 1/√N (~1e-2 here)


def estimate_paths(checkpoint: str | Path, weights: str) -> tuple[Path, Path]:
    """(tensor file, JSON) of the estimate beside the checkpoint directory that ``checkpoint`` resolves to."""
    ckpt = inspect_checkpoint(checkpoint).path
    stem = f"{ckpt.name}.analytic-{weights}"
    return ckpt.parent / f"{stem}.safetensors", ckpt.parent / f"{stem}.json"


def gamma_tables(model: LoadedModel) -> tuple[str, ...]:
    """The Γ tables stored for ``model``: "gamma", and "gamma_null" for a class-conditional model that knows p(x)."""
    return ("gamma", "gamma_null") if model.num_classes is not None and model.null_class_trained else ("gamma",)


def table_for(model: LoadedModel, conditional: bool) -> str:
    """The table a chain uses: the class-conditional Γ with class labels, the "no class" Γ without."""
    return "gamma_null" if model.num_classes is not None and not conditional else "gamma"


def write_estimate(checkpoint: str | Path, model: LoadedModel, gamma: Tensor | dict[str, Tensor], n_images: int,
                   seed: int) -> Path:
    """Store Γ (or the tables of ``gamma_tables``) beside the checkpoint (tensor file, then the JSON naming its
    sha256); returns the JSON path."""
    tables = gamma if isinstance(gamma, dict) else {"gamma": gamma}
    if tuple(tables) != gamma_tables(model):
        raise ValueError(f"the estimate of this model holds the tables {gamma_tables(model)}, got {tuple(tables)}")
    gamma = tables["gamma"]
    tensor_path, json_path = estimate_paths(checkpoint, model.weights)
    with atomic_file(tensor_path) as tmp:
        save_safetensors({k: v.double().contiguous().cpu() for k, v in tables.items()}, tmp)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    record = {"format": FORMAT, "version": VERSION, "model_hash": model_hash(model).hex(), "weights": model.weights,
              "T": int(gamma.numel()), "n_images": int(n_images), "seed": int(seed), "sha256": digest}
    return write_text(json_path, json.dumps(record, indent=2) + "\n")


def read_estimate(checkpoint: str | Path, model: LoadedModel,
                  conditional: bool = True) -> tuple[Tensor, dict[str, Any]]:
    """(Γ, its JSON record) stored for exactly this model; anything else is one CheckpointError line.

    ``conditional`` (class-conditional models): Γ under class labels, else the "no class" Γ (``table_for``).
    """
    tensor_path, json_path = estimate_paths(checkpoint, model.weights)
    if not json_path.exists():
        raise CheckpointError(f"no Analytic-DPM estimate beside the checkpoint ({json_path}); run `ddpm "
                              f"analytic-variance --checkpoint {checkpoint}` first")
    record = read_json(json_path)
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("version") != VERSION:
        raise CheckpointError(f"{json_path} is not a version-{VERSION} {FORMAT} record")
    ours = model_hash(model).hex()
    if record.get("model_hash") != ours:
        raise CheckpointError(f"{json_path} was estimated for another model (hash {str(record.get('model_hash'))!r}, "
                              f"this one {ours}); run `ddpm analytic-variance --recompute`")
    T = model.diffusion.T
    if record.get("T") != T:
        raise CheckpointError(f"{json_path} holds Γ for T = {record.get('T')!r} steps, the model has T = {T}")
    try:
        size = tensor_path.stat().st_size
    except OSError as e:
        raise CheckpointError(f"{tensor_path} cannot be read: {e.strerror}; run `ddpm analytic-variance "
                              "--recompute`") from None
    if size > MAX_ESTIMATE_BYTES:
        raise CheckpointError(f"{tensor_path} has {size} bytes, more than the {MAX_ESTIMATE_BYTES} an estimate holds")
    data = tensor_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != record.get("sha256"):
        raise CheckpointError(f"{tensor_path} does not match the sha256 in {json_path.name} (interrupted write or "
                              "edited file); run `ddpm analytic-variance --recompute`")
    header = read_safetensors_header(tensor_path)
    tables = gamma_tables(model)
    if header != {k: ("F64", (T,)) for k in tables}:
        raise CheckpointError(f"{tensor_path} must hold the F64 tensor(s) {', '.join(repr(k) for k in tables)} of "
                              f"shape ({T},), got {header}")
    gamma = safetensors.torch.load(data)[table_for(model, conditional)]
    if not torch.isfinite(gamma).all() or (gamma < 0).any():
        raise CheckpointError(f"{tensor_path}: Γ_t = E‖ε_θ‖²/d must be finite and >= 0 at every t")
    return gamma, record


def analytic_gamma(checkpoint: str | Path, model: LoadedModel, images: Any, n_images: int | None = None,
                   seed: int = 0, batch_size: int = 64, recompute: bool = False, conditional: bool = True,
                   group: ProcessGroup | None = None) -> Tensor:
    """Γ for ``model``: the stored estimate, or (if none, or ``recompute``) one from ``images`` that is then stored.

    ``images`` is an indexable dataset of training images in [-1, 1] (with their labels for a class-conditional
    model); the first ``n_images`` (default DEFAULT_IMAGES, at most its length) are used. A stored estimate of
    another model is refused, not replaced, unless ``recompute``; one of another image count is refused when
    ``n_images`` is given explicitly. ``conditional`` picks the table of a class-conditional model (``table_for``).

    Image i draws its x_t from stream (seed, "analytic-gamma", i), so the estimate is the same for any batch size
    and number of processes: under torchrun (``group``) every rank sums its share of the batches, rank 0 adds the
    sums in batch order and stores Γ, and every rank receives it (as rank 0's error, if any: ``on_main``).
    """
    if n_images is not None:
        check_int("--n-images", n_images, 1)
    group = group or ProcessGroup()  # one process
    stored = on_main(lambda: _stored_estimate(checkpoint, model, n_images, recompute, conditional), group)
    if stored is not None:
        return stored
    n = min(len(images), n_images or DEFAULT_IMAGES)
    if n < 1:
        raise CheckpointError("the Γ estimate needs at least one training image; the training split is empty")
    device = next(model.net.parameters()).device
    labels = None
    if model.num_classes is not None:  # Γ under each image's own label: the data's classes must be the model's
        labels = torch.as_tensor(check_model_classes(model, images))
    batches = list(batched(range(n), batch_size))
    mine = shard(batches, group)  # a contiguous run of batches: rank order is batch order
    sums: dict[str, list[Tensor]] = {}
    for name in gamma_tables(model):
        # the same images and noise for every table (common random numbers)
        given = labels is not None and name == "gamma"
        sums[name] = [gamma_sums(model, model.diffusion, stack_items(images, idx).to(device),
                                 per_item(seed, "analytic-gamma", idx),
                                 labels=labels[list(idx)].to(device) if given else None)
                      for idx in mine]
    gathered = gather_to_main(sums, group)

    def store() -> Tensor:
        assert gathered is not None
        tables = {name: gamma_from_sums((b for rank in gathered for b in rank[name]), n, model.diffusion.T)
                  for name in gamma_tables(model)}
        assert not any(math.isnan(float(g.sum())) for g in tables.values())
        write_estimate(checkpoint, model, tables, n, seed)
        return tables[table_for(model, conditional)]

    return on_main(store, group)


def _stored_estimate(checkpoint: str | Path, model: LoadedModel, n_images: int | None, recompute: bool,
                     conditional: bool) -> Tensor | None:
    """The estimate stored for ``model`` (refused if of another image count than ``n_images``), or None when
    there is none or ``recompute``."""
    _, json_path = estimate_paths(checkpoint, model.weights)
    if not json_path.exists() or recompute:
        return None
    gamma, record = read_estimate(checkpoint, model, conditional)
    if n_images is not None and record.get("n_images") != n_images:
        raise CheckpointError(f"{json_path} was estimated from {record.get('n_images')!r} images, not "
                              f"--n-images {n_images}; add --recompute to replace it")
    return gamma


def analytic_diffusion(model: LoadedModel, gamma: Tensor) -> AnalyticDiffusion:
    """The model's diffusion with σ*² from Γ (Analytic-DDPM; respace it with ``with_steps``)."""
    return AnalyticDiffusion(model.diffusion, gamma)


@dataclass(frozen=True)
class AnalyticVarianceOptions:
    """What ``ddpm analytic-variance`` estimates, and with what."""

    checkpoint: str                                 # checkpoint directory or run directory (its latest)
    weights: Weights = "ema"                        # the weights Γ is estimated for
    n_images: int | None = None                     # training images averaged over (None: DEFAULT_IMAGES)
    seed: int = 0                                   # seeds the noise draws
    batch_size: int = 64                            # images per network call
    device: str = DEFAULT_DEVICE                    # resolved by ddpm.processes.device_for
    data: DataChoice = DataChoice(split="train")    # the estimate averages over training images
    recompute: bool = False                         # replace an estimate already stored

    def __post_init__(self) -> None:
        if self.n_images is not None:
            check_int("--n-images", self.n_images, 1)
        check_seed("--seed", self.seed)
        check_int("--batch-size", self.batch_size, 1)
        check_device(self.device)  # all before the model is loaded


def run_analytic_variance(options: AnalyticVarianceOptions) -> tuple[Path, Tensor]:
    """``ddpm analytic-variance``: Γ on the training split, stored beside the checkpoint; (the JSON, Γ).

    Under torchrun every rank computes its share of the images (``analytic_gamma``) and rank 0 writes Γ; every
    rank returns the same (JSON, Γ) — or raises rank 0's error.
    """
    o = options
    device = device_for(o.device, local_rank())
    with evaluation_processes(device) as group:
        return _estimate(o, device, group)


def _estimate(o: AnalyticVarianceOptions, device: torch.device, group: ProcessGroup) -> tuple[Path, Tensor]:
    """Γ for ``o``: loaded, or computed (this rank's share) and stored; (the JSON, Γ)."""
    model = load_model(o.checkpoint, o.weights, device)
    train = load_split(model.config, o.data)
    gamma = analytic_gamma(o.checkpoint, model, train, o.n_images, o.seed, o.batch_size, o.recompute, group=group)
    return estimate_paths(o.checkpoint, model.weights)[1], gamma.cpu()
