"""Samples (Algorithm 2, respaced, DDIM, …) streamed in batches into an .npz of uint8 images.

Sample i is drawn with its own generator, stream (seed, "sample", i) of ``ddpm.rng``, for x_T and for every
step's noise, so the images do not depend on the batch size or on how many processes share the work. A
class-conditional model draws one class (``--class``, by name or index) or every class (``--class all``: --n of
each, one grid row per class), guided by ``--guidance`` w (``ddpm.sampling.guidance``); without a class it
draws from p(x) through its "no class" input.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import ConfigError, check_float, check_int, shown
from ..diffusion import GaussianDiffusion, Model
from ..images import save_image_grid, to_display_uint8
from ..outputs import safe_name, write_npz
from ..rng import per_item
from ..sampling import SAMPLER_NAMES, SAMPLERS, SamplerName, sample
from ..sampling.guidance import check_guidance, class_labels, model_classes
from ..sampling.registry import spacing_for
from ..schedules import SPACINGS, Spacing
from .common import CommonOptions, batched, is_image_model, session, write_json, write_run_info
from .figures import plot_points
from .parallel import gather_to_main, shard

RUN_INFO_STEMS = ("args", "config")  # write_run_info's args.json and config.json: no --name may take them


@dataclass(frozen=True)
class SamplerSpec:
    """Which reverse process draws the samples."""

    sampler: SamplerName = "ancestral"   # a name of ddpm.sampling.SAMPLERS (Algorithm 2 by default)
    steps: int | None = None             # None: all T steps; fewer: respaced by ``spacing``
    eta: float = 0.0                     # DDIM's η (0: deterministic)
    clip_denoised: bool = True           # clip x̂₀ to [-1, 1] at every step
    spacing: Spacing | None = None       # which ``steps`` of the T (schedules.spaced_steps); None: the sampler's

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"--sampler must be one of {', '.join(SAMPLER_NAMES)}, got {shown(self.sampler)}")
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise ConfigError(f"--spacing must be one of {', '.join(SPACINGS)}, got {shown(self.spacing)}")
        if self.steps is not None:
            check_int("--steps", self.steps, 1)  # <= T once the model is loaded (run_sample)
        elif self.spacing is not None:  # all T steps run: a spacing would change nothing yet be recorded as used
            raise ConfigError(f"--spacing {self.spacing} chooses which steps a shorter chain takes; without "
                              "--steps every one of the T steps runs: give --steps K too, or leave --spacing out")
        check_float("--eta", self.eta, 0.0)  # NaN would pass `eta < 0` and poison every sample
        if self.eta and not SAMPLERS[self.sampler].takes_eta:
            raise ConfigError(f"--eta applies to ddim only, not to --sampler {self.sampler}")

    def n_steps(self, T: int) -> int:
        """Network calls per sample."""
        return T if self.steps is None else self.steps


def sample_batch(model: Model, diffusion: GaussianDiffusion, shape: tuple[int, ...], spec: SamplerSpec, seed: int,
                 first_index: int, count: int, device: torch.device | str = "cpu",
                 labels: Sequence[int] | None = None, guidance: float = 0.0) -> torch.Tensor:
    """Samples first_index .. first_index + count − 1 (each seeded by its index, of class ``labels[j]``), in [-1, 1]."""
    return sample_indices(model, diffusion, shape, spec, seed, range(first_index, first_index + count), device,
                          labels, guidance)


def sample_indices(model: Model, diffusion: GaussianDiffusion, shape: tuple[int, ...], spec: SamplerSpec, seed: int,
                   indices: Sequence[int], device: torch.device | str = "cpu",
                   labels: Sequence[int] | None = None, guidance: float = 0.0) -> torch.Tensor:
    """The samples at ``indices`` (sample i from stream (seed, "sample", i), of class ``labels[j]``), in [-1, 1]."""
    noise = per_item(seed, "sample", [int(i) for i in indices])
    return sample(model, diffusion, (len(indices), *shape), noise, spec.sampler, spec.steps, spec.eta,
                  spec.clip_denoised, device, spacing=spec.spacing, classes=None if labels is None else list(labels),
                  guidance=guidance)


def generate(model: Model, diffusion: GaussianDiffusion, shape: tuple[int, ...], spec: SamplerSpec, seed: int,
             indices: Sequence[int], batch_size: int = 64, device: torch.device | str = "cpu",
             progress: bool = False, labels: Sequence[int] | None = None, guidance: float = 0.0) -> np.ndarray:
    """Samples at ``indices`` (any, e.g. a shard's or a few picked again), streamed in batches: uint8 NHWC images,
    or float32 points (N, D). Sample i is the same whatever the batch and whichever other indices come with it.

    ``labels`` gives the class of each of ``indices`` (a class-conditional model), guided with weight ``guidance``.
    """
    image = len(shape) == 3
    out: list[np.ndarray] = []
    bar = tqdm(total=len(indices), desc=f"{spec.sampler} ({spec.n_steps(diffusion.T)} steps)", unit="img",
               disable=not progress, leave=False)
    for start, idx in zip(range(0, len(indices), batch_size), batched(indices, batch_size)):
        mine = None if labels is None else labels[start:start + len(idx)]
        x = sample_indices(model, diffusion, shape, spec, seed, idx, device, mine, guidance)
        out.append(to_display_uint8(x) if image else x.float().cpu().numpy())
        bar.update(len(idx))
    bar.close()
    if not out:
        return np.zeros((0, *shape[1:], shape[0]) if image else (0, *shape), np.uint8 if image else np.float32)
    return np.concatenate(out)


# --- the command -------------------------------------------------------------------------------

@dataclass(frozen=True)
class SampleOptions:
    """What ``ddpm sample`` draws, beyond the common options."""

    n: int = 64                          # number of samples (of each class with classes="all")
    spec: SamplerSpec = SamplerSpec()
    grid: int = 100                      # samples shown in samples.png
    name: str = "samples"                # file stem: samples.npz, samples.png, samples.json
    classes: str | None = None           # a class by name or index, "all", or None (p(x): the "no class" input)
    guidance: float = 0.0                # w of classifier-free guidance (needs a class)

    def __post_init__(self) -> None:
        check_int("--n", self.n, 1)
        check_int("--grid", self.grid, 1)  # the PNG shows min(grid, n) samples; an empty grid is no image
        safe_name(self.name)  # the name must stay inside --out
        if self.name in RUN_INFO_STEMS:  # <name>.json would be replaced by the run info written after it
            raise ConfigError(f"--name {self.name!r} would share {self.name}.json with the run info this command "
                              "writes beside the samples; choose another name")
        if self.classes is not None and (not isinstance(self.classes, str) or not self.classes.strip()):
            raise ConfigError(f"--class must be a class name, an index or 'all', got {shown(self.classes)}")
        check_guidance(self.guidance, True, "--guidance")  # a finite number >= 0
        if self.guidance and self.classes is None:  # before the model is loaded: say what guidance needs
            raise ConfigError(f"--guidance={self.guidance:g} needs a class to guide towards: give --class too "
                              "(guidance needs a class-conditional model)")

    def labels(self, model: Model, n: int) -> list[int] | None:
        """The class of each of the n samples (None: unconditional); "all" is n of each class, class-major."""
        if self.classes is None:
            return None
        K, _ = model_classes(model)
        total = n * K if self.classes == "all" and K else n
        return class_labels(model, self.classes, total, "--class").tolist()  # type: ignore[union-attr]


@dataclass(frozen=True)
class SampleResult:
    """Where the samples went and how fast they came."""

    npz: str
    png: str
    n: int
    sampler: str
    steps: int
    eta: float
    spacing: str
    seconds: float
    img_per_s: float
    world_size: int
    classes: str | None = None     # --class (None: unconditional)
    guidance: float = 0.0          # w
    seed: int | None = None        # --seed: sample i drew from stream (seed, "sample", i)
    checkpoint: str | None = None  # --checkpoint as given
    checkpoint_step: int | None = None  # the training step of the checkpoint used
    weights: str | None = None     # "ema" or "model"
    clip_denoised: bool = True     # x̂₀ clipped to [-1, 1] at every step (False: --no-clip)


def run_sample(common: CommonOptions, options: SampleOptions = SampleOptions()) -> SampleResult | None:
    """``ddpm sample``: <name>.npz (key ``images``, uint8 NHWC; ``points`` for toy models), a PNG, a JSON (rank 0)."""
    with session(common, "sample") as s:
        if options.spec.steps is not None:  # needs the model's T: checked before any sampling or file
            check_int("--steps", options.spec.steps, 1, s.model.diffusion.T)
        n = min(options.n, common.limit) if common.limit is not None else options.n
        labels = options.labels(s.model, n)  # before any sampling: an unknown class names the known ones
        total = n if labels is None else len(labels)
        shape = s.model.sample_shape
        mine = shard(range(total), s.group)
        diffusion = s.model.diffusion
        if SAMPLERS[options.spec.sampler].needs_gamma:
            # Analytic-DPM's samplers: σ*² from the Γ estimate stored beside the checkpoint (ddpm analytic-variance)
            from .analytic_variance import analytic_diffusion, read_estimate

            gamma = read_estimate(common.checkpoint, s.model, conditional=labels is not None)[0]
            diffusion = analytic_diffusion(s.model, gamma)
        tick = time.perf_counter()
        part = generate(s.model, diffusion, shape, options.spec, common.seed, mine, common.batch_size,
                        s.device, common.progress and s.progress_enabled,
                        None if labels is None else [labels[i] for i in mine], options.guidance)
        parts = gather_to_main(part, s.group)
        if parts is None:
            return None
        seconds = time.perf_counter() - tick
        result = write_samples(s.out, options, np.concatenate(parts), is_image_model(s.config), seconds,
                               s.model.diffusion.T, s.group.world_size, labels, model_classes(s.model)[1],
                               seed=common.seed, checkpoint=common.checkpoint, checkpoint_step=s.model.step,
                               weights=s.model.weights)
        write_run_info(s, {"common": common, "sample": options})
        return result


def write_samples(out: Path, options: SampleOptions, samples: np.ndarray, image: bool, seconds: float, T: int,
                  world_size: int, labels: Sequence[int] | None = None,
                  class_names: Sequence[str] | None = None, *, seed: int | None = None,
                  checkpoint: str | None = None, checkpoint_step: int | None = None,
                  weights: str | None = None) -> SampleResult:
    """Write the .npz (with ``labels`` and ``class_names`` of class-conditional samples), the figure and the JSON
    (what was drawn and from what: enough to draw the same samples again, whatever args.json says later)."""
    name = safe_name(options.name)
    npz, png = out / f"{name}.npz", out / f"{name}.png"
    arrays = {"images" if image else "points": samples}
    if labels is not None:
        arrays.update(labels=np.asarray(labels, dtype=np.int64), class_names=np.asarray(class_names or [], dtype=str))
    write_npz(npz, **arrays)
    if image and options.classes == "all":  # one row per class, up to grid/K of its samples
        rows = samples.reshape(len(class_names or ()), -1, *samples.shape[1:])
        save_image_grid(png, rows[:, :max(1, options.grid // rows.shape[0])])
    elif image:
        save_image_grid(png, samples[:options.grid])  # a square grid
    else:
        plot_points(png, samples, f"{len(samples)} samples")
    spec = options.spec
    spacing = spacing_for(spec.sampler, spec.spacing)
    result = SampleResult(str(npz), str(png), len(samples), spec.sampler, spec.n_steps(T), spec.eta, spacing,
                          seconds,
                          len(samples) / seconds if seconds > 0 else math.nan, world_size, options.classes,
                          options.guidance, seed, checkpoint, checkpoint_step, weights, spec.clip_denoised)
    write_json(out / f"{name}.json", result)
    return result
