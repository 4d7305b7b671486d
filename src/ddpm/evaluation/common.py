"""What every evaluation command shares: its common options, the loaded model, the dataset, JSON/CSV output."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import ConfigError, DataConfig, RunConfig, check_int, check_seed, from_dict, shown, to_dict
from ..data import DataError, build_dataset, class_names_for, dataset_labels
from ..loading import LoadedModel, Weights, load_model
from ..outputs import OutputDir, atomic_file, check_output_dir, write_text
from ..processes import DEFAULT_DEVICE, ProcessGroup, check_device, device_for, local_rank
from ..sampling.guidance import known_classes
from .parallel import evaluation_processes, on_main

Split = Literal["train", "test"]


@dataclass(frozen=True)
class CommonOptions:
    """Options every evaluation command takes."""

    checkpoint: str                  # checkpoint directory or run directory (its latest checkpoint)
    out: str                         # output folder
    weights: Weights = "ema"         # "ema" (what the paper evaluates) or "model"
    seed: int = 0                    # seeds every noise draw (per item, so sharding changes nothing)
    batch_size: int = 64             # items per network call (before any t batching)
    device: str = DEFAULT_DEVICE     # auto, cpu, cuda (cuda:LOCAL_RANK under torchrun), cuda:N, mps
    limit: int | None = None         # work on the first N items only
    progress: bool = True            # tqdm progress bars (rank 0 only)
    overwrite: bool = False          # write into an --out that holds other files (see ddpm.outputs)
    bf16: bool = False               # the network (only) under bfloat16 autocast

    def __post_init__(self) -> None:
        check_seed("--seed", self.seed)
        check_int("--batch-size", self.batch_size, 1)
        if self.limit is not None:
            check_int("--limit", self.limit, 1)
        check_device(self.device)  # the spelling, before the model is loaded; device_for checks it exists


@dataclass(frozen=True)
class DataChoice:
    """Which data to evaluate on: the checkpoint's ``data`` section unless overridden."""

    split: Split = "test"
    path: str | None = None          # replaces data.path
    dataset: str | None = None       # replaces data.dataset

    def __post_init__(self) -> None:
        if self.split not in ("train", "test"):
            raise ConfigError(f"--split must be train or test, got {shown(self.split)}")


@dataclass
class Session:
    """A loaded model on its device, this process's place among the processes, and the output folder."""

    model: LoadedModel
    device: torch.device
    group: ProcessGroup
    out: Path
    command: str                     # the ddpm command writing ``out``

    @property
    def config(self) -> RunConfig:
        return self.model.config

    @property
    def progress_enabled(self) -> bool:
        return self.group.is_main


@contextmanager
def session(common: CommonOptions, command: str) -> Iterator[Session]:
    """Join the processes, load the model on the device and claim the output folder (rank 0); tear down after.

    The folder is checked before the model is loaded, on rank 0, whose verdict every rank shares (``on_main``: a
    refused --out stops all of them at once, none is left waiting for rank 0); one this command created is
    removed again if the command fails before writing anything into it (``ddpm.outputs.OutputDir``).
    """
    device = device_for(common.device, local_rank())
    with evaluation_processes(device) as group:
        on_main(lambda: str(check_output_dir(common.out, command, common.overwrite)), group)
        model = load_model(common.checkpoint, common.weights, device)
        model.bf16 = common.bf16
        with OutputDir(common.out, command, overwrite=common.overwrite, active=group.is_main) as out:
            yield Session(model, device, group, out, command)


def is_image_model(cfg: RunConfig) -> bool:
    """Whether the model makes images (a U-Net) rather than points (the toy MLP)."""
    return cfg.model.kind == "unet"


def data_config(cfg: RunConfig, choice: DataChoice) -> DataConfig:
    """The checkpoint's data section with --data / --dataset applied."""
    changes: dict[str, Any] = {}
    if choice.path is not None:
        changes["path"] = choice.path
    if choice.dataset is not None:
        changes["dataset"] = choice.dataset
    if not changes:
        return cfg.data
    return from_dict(DataConfig, {**to_dict(cfg.data), **changes}, "data")


def load_split(cfg: RunConfig, choice: DataChoice) -> Dataset[torch.Tensor]:
    """The chosen split at the model's pixel levels, items in [-1, 1]."""
    return build_dataset(data_config(cfg, choice), cfg.model.sample_shape, choice.split, cfg.diffusion.levels)


def check_model_classes(model: LoadedModel, dataset: Dataset[torch.Tensor]) -> np.ndarray:
    """The labels (N,) of ``dataset`` for a class-conditional ``model``: its classes must be the model's."""
    assert model.num_classes is not None
    class_names_for(dataset, model.num_classes)  # the count and the label range
    labels, data_names = dataset_labels(dataset)
    check_same_classes(dataset, data_names, model.class_names, "the model's are")
    return labels


def check_same_classes(dataset: Dataset, names: Sequence[str] | None, expected: Sequence[str] | None, whose: str,
                       hint: str = "") -> None:
    """A DataError unless a dataset's class ``names`` are the ``expected`` ones in the same order (either None:
    nothing to compare), saying ``whose`` the expected ones are."""
    if names is None or expected is None or tuple(names) == tuple(expected):
        return
    raise DataError(f"{dataset!r} has the classes {known_classes(names)}, but {whose} {known_classes(expected)}"
                    + (f"; {hint}" if hint else ""))


def limited(n: int, limit: int | None) -> int:
    """min(n, limit), or n without a limit."""
    return n if limit is None else min(n, limit)


def stack_items(dataset: Dataset[torch.Tensor], indices: Sequence[int]) -> torch.Tensor:
    """The dataset items at ``indices`` as one batch."""
    return torch.stack([dataset[int(i)] for i in indices])


def batched(indices: Sequence[int], batch_size: int) -> Iterator[Sequence[int]]:
    """Consecutive slices of at most ``batch_size`` indices."""
    for start in range(0, len(indices), batch_size):
        yield indices[start:start + batch_size]


def mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of the mean (NaN for fewer than two values)."""
    v = values.double()
    n = v.numel()
    if n == 0:
        return math.nan, math.nan
    return v.mean().item(), (v.std() / math.sqrt(n)).item() if n > 1 else math.nan


# --- output files ------------------------------------------------------------------------------

def _jsonable(obj: Any) -> Any:
    """Dataclasses, paths, tuples and tensors as plain JSON values; NaN becomes null."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:
        return _jsonable(obj.item())
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)  # e.g. a module passed as an option


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` (dataclasses allowed) as indented JSON, atomically."""
    return write_text(path, json.dumps(_jsonable(obj), indent=2, ensure_ascii=False) + "\n")


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write rows of equal keys as a CSV with a header."""
    path = Path(path)
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_run_info(s: Session, options: Any) -> list[Path]:
    """``args.json`` (the resolved options, checkpoint step, processes) and ``config.json`` (the model's config)."""
    return write_info_files(s.out, s.command, options, s.config.to_dict(), checkpoint_step=s.model.step,
                            weights_used=s.model.weights, world_size=s.group.world_size, device=str(s.device))


def write_info_files(out: Path, command: str, options: Any, config: dict[str, Any] | None,
                     **extra: Any) -> list[Path]:
    """``args.json`` with the command, its resolved options and ``extra``; ``config.json`` when a config is known."""
    info = {"command": command, "options": options, **extra, "torch": torch.__version__}
    paths = [write_json(out / "args.json", info)]
    if config is not None:
        paths.append(write_json(out / "config.json", config))
    return paths
