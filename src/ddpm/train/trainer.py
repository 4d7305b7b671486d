"""Algorithm 1 as a trainer: the paper's recipe (Adam, warm-up, clipping, EMA, flips), crash-safe checkpoints,
exact resumption, DDP across processes, a progress bar, logs (``ddpm.train.logging``) and EMA sample grids.

Determinism: the global batch of step k (its examples, t and ε) is a function of (seed, k) alone (streams of
``ddpm.rng``), so a resumed run repeats an uninterrupted one exactly and N processes see the same global batch as
one process; so are its random flips (one coin per example of the global batch). Only dropout is drawn per process,
from torch's global RNG, whose state every process saves in each checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..checkpoint import (
    Checkpoint,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    set_aside_checkpoint,
)
from ..config import ConfigError, RunConfig, check_resume_config
from ..data import LabelledDataset, dataset_for, random_flip
from ..diffusion import GaussianDiffusion
from ..evaluation.common import check_same_classes, is_image_model
from ..evaluation.nll import resolve_decoder
from ..images import save_image_grid, to_display_uint8
from ..loading import CLASS_NAMES_KEY, shape_problems
from ..nets import network_for
from ..outputs import OutputDir, RunLock, check_not_locked, check_output_dir, write_text
from ..processes import (
    DEFAULT_DEVICE,
    ProcessGroup,
    all_gather_cat,
    all_ranks_ok,
    barrier,
    device_for,
    joined,
    local_rank,
    under_torchrun,
)
from ..rng import GlobalNoise, generator, seed_for, seed_torch
from ..sampling import Conditioned, sample
from .ema import EMA
from .logging import TrainingLog, Window
from .t_sampling import t_sampler_for

log = logging.getLogger(__name__)

GRID_SAMPLES = 64
T_SAMPLER_PREFIX = "t_sampler."  # the t-sampler's state among a checkpoint's tensors
LOG_WINDOW_PREFIX = "log_window."  # the open log window's sums among a checkpoint's tensors
LOG_ROW_FINAL = "log_row_final"  # extra: the checkpoint's step has a log row only because that run ended there
GRID_STEPS = 100  # periodic grids use a respaced 100-step ancestral chain to stay cheap
Resume = bool | Literal["latest", "latest-valid"]  # True is "latest"; "latest-valid" skips damaged checkpoints


class NonFiniteError(RuntimeError):
    """The loss or the gradient was NaN or infinite; training stopped before changing any weight."""


@dataclass
class TrainResult:
    """What a training call did."""

    run_dir: Path
    start_step: int
    step: int
    losses: list[float] = field(default_factory=list)  # mean loss of each step run by this call
    skipped_steps: int = 0


# --- the pieces of Algorithm 1, each a small function -------------------------------------------

def lr_at(step: int, base_lr: float, warmup_steps: int) -> float:
    """Linear warm-up to the base learning rate over ``warmup_steps`` steps, then constant (Appendix B)."""
    if warmup_steps <= 0:
        return base_lr
    return base_lr * min(1.0, (step + 1) / warmup_steps)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """Indices of the global batch at ``step``: epochs are seeded permutations, the last partial batch dropped."""
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise ConfigError(f"train.batch_size={batch_size} is larger than the dataset ({n} examples)")
    epoch, j = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=generator(seed, "data-order", epoch))
    return perm[j * batch_size:(j + 1) * batch_size]


def drop_labels(y: torch.Tensor, u: torch.Tensor, p: float, null_class: int) -> torch.Tensor:
    """Labels with each replaced by "no class" where u < p (u ~ U[0, 1)): label dropout (Ho & Salimans 2022)."""
    return torch.where(u.to(y.device) < p, torch.full_like(y, null_class), y)


class _StepBatches(torch.utils.data.Sampler[list[int]]):
    """This process's share of every global batch from ``start`` on (contiguous slices of the global batch)."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, end: int, group: ProcessGroup) -> None:
        self.n, self.batch_size, self.seed, self.start, self.end, self.group = n, batch_size, seed, start, end, group

    def __iter__(self) -> Iterator[list[int]]:
        local = self.batch_size // self.group.world_size
        lo = self.group.rank * local
        for step in range(self.start, self.end):
            yield batch_indices(step, self.n, self.batch_size, self.seed)[lo:lo + local].tolist()

    def __len__(self) -> int:
        return max(0, self.end - self.start)


# --- the trainer -------------------------------------------------------------------------------

class Trainer:
    """Trains one run directory; everything that can be wrong is checked before any state changes.

    ``group`` is this process's place among torchrun's processes (``train`` joins it with
    ``ddpm.processes.joined``); without one the trainer is a single process.
    """

    def __init__(self, cfg: RunConfig, run_dir: str | Path, *, resume: Resume = False,
                 device: str | torch.device = DEFAULT_DEVICE, progress: bool = True, dataset: Dataset | None = None,
                 overwrite: bool = False, group: ProcessGroup | None = None) -> None:
        self.cfg, self.run_dir, self.progress, self.overwrite = cfg, Path(run_dir), progress, overwrite
        tc = cfg.train
        if group is None and under_torchrun():
            raise ConfigError("a Trainer under torchrun needs its process group: call ddpm.train.train, or pass "
                              "group= from ddpm.processes.joined")
        self.group = group if group is not None else ProcessGroup()
        self.device = device if isinstance(device, torch.device) else device_for(device, self.group.local_rank)
        if tc.batch_size % self.group.world_size:
            raise ConfigError(f"train.batch_size={tc.batch_size} is not divisible by the number of processes "
                              f"({self.group.world_size})")
        # everything is checked before anything is written: the run directory and the config it was trained
        # with first (a resume with another config would otherwise fail on data read by the wrong config), then
        # the data (a missing or corrupt dataset)
        check_output_dir(self.run_dir, "train", overwrite)  # a folder of someone else's files is no run directory
        check_not_locked(self.run_dir)  # another ddpm train is writing it: say so, not what it has written so far
        self.damaged: list[Path] = []  # newer checkpoints that failed validation ("latest-valid" sets them aside)
        self.resume_from = self._resume_checkpoint(resume)
        self.seen_latest = latest_checkpoint(self.run_dir) if self.run_dir.exists() else None
        if self.resume_from is not None:
            check_resume_config(cfg, self.resume_from.config)
        self.dataset = dataset if dataset is not None else dataset_for(cfg, "train")
        if cfg.model.num_classes is not None and not isinstance(self.dataset, LabelledDataset):
            # (x₀, label) items; the class names go into every checkpoint
            self.dataset = LabelledDataset(self.dataset, cfg.model.num_classes)
        if len(self.dataset) < tc.batch_size:  # type: ignore[arg-type]
            raise ConfigError(f"train.batch_size={tc.batch_size} is larger than the dataset ({len(self.dataset)})")
        if self.resume_from is not None:
            if isinstance(self.dataset, LabelledDataset):  # class k must go on meaning class k (a renamed folder)
                check_same_classes(self.dataset.images, self.dataset.class_names,
                                   self.resume_from.extra.get(CLASS_NAMES_KEY),
                                   f"the run in {self.run_dir} was trained on",
                                   "resume it on that data, or start a new run")

        seed_torch(tc.seed, "weights")  # the same initial weights in every process
        self.net = network_for(cfg).to(self.device)
        self.diffusion = GaussianDiffusion.from_config(cfg.diffusion)
        self.decoder = resolve_decoder("auto", is_image_model(cfg))  # L_0 of L_vlb as `ddpm nll` evaluates it
        self.ema = EMA(self.net, tc.ema_decay, tc.ema_warmup_power)
        self.t_sampler = t_sampler_for(tc.t_sampler, self.diffusion)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=tc.lr)
        self.step = 0
        self.skipped = 0
        self.window = Window()  # the log window: steps since the last log row
        self.log_row_final = False  # the row at self.step was written only because the run ended there
        if self.resume_from is not None:
            self._restore(self.resume_from)
        else:
            seed_torch(tc.seed, "dropout", self.group.rank)  # dropout streams, distinct per process
        self.model = self._wrap(self.net)

    # setup
    def _resume_checkpoint(self, resume: Resume) -> Checkpoint | None:
        if resume not in (False, True, "latest", "latest-valid"):
            raise ConfigError(f"--resume must be 'latest' or 'latest-valid', got {resume!r}")
        existing = list_checkpoints(self.run_dir) if self.run_dir.exists() else []
        if not resume:
            if existing:
                raise ConfigError(f"{self.run_dir} already holds checkpoints ({existing[-1].name}); pass --resume "
                                  "to continue that run or choose another --out")
            return None
        if not existing:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.run_dir}")
        try:
            return load_checkpoint(existing[-1])
        except CheckpointError as damage:
            first_damage = damage
        # the newest checkpoint is damaged: find the newest intact one
        self.damaged = [existing[-1]]
        for path in reversed(existing[:-1]):
            try:
                ckpt = load_checkpoint(path)
            except CheckpointError:
                self.damaged.append(path)
                continue
            if resume != "latest-valid":
                raise CheckpointError(
                    f"the latest checkpoint is damaged ({first_damage}); the newest intact one is {path.name}: "
                    "pass --resume latest-valid to continue from it (the damaged ones are set aside, not deleted)")
            if self.group.is_main:  # (every process finds it; one line is enough)
                log.warning("resuming from %s: the newer %s failed validation and will be set aside",
                            path.name, ", ".join(p.name for p in self.damaged))
            return ckpt
        raise CheckpointError(f"no intact checkpoint in {self.run_dir / 'checkpoints'}; the latest is damaged "
                              f"({first_damage})")

    def _restore(self, ckpt: Checkpoint) -> None:
        expected = {k: tuple(v.shape) for k, v in self.net.state_dict().items()}
        for what, state in (("model", ckpt.model), ("ema", ckpt.ema)):
            if state is None:
                continue
            problems = shape_problems(expected, {k: tuple(v.shape) for k, v in state.items()})
            if problems:  # a crafted or foreign checkpoint: say so instead of torch's page of RuntimeError
                raise CheckpointError(f"the {what} weights of the checkpoint in {self.run_dir} do not fit the "
                                      f"network its config describes: {problems}")
        self.net.load_state_dict(ckpt.model)
        if ckpt.ema is not None:
            self.ema.load_state_dict(ckpt.ema)
        if ckpt.optimizer is not None:
            self.opt.load_state_dict(ckpt.optimizer)
        try:
            self.t_sampler.load_state_dict({k.removeprefix(T_SAMPLER_PREFIX): v for k, v in ckpt.tensors.items()
                                            if k.startswith(T_SAMPLER_PREFIX)})
        except ValueError as e:
            raise CheckpointError(f"the checkpoint in {self.run_dir} cannot resume its t-sampler: {e}") from None
        self.step = ckpt.step
        self.skipped = int(ckpt.extra.get("skipped_steps", 0))
        self._restore_log_window(ckpt)
        self._restore_rng(ckpt)
        self._say_if_the_world_size_changed(ckpt)

    def _say_if_the_world_size_changed(self, ckpt: Checkpoint) -> None:
        """Resuming with another number of processes keeps every step's global batch (examples, t, ε, flips,
        labels), but not what is drawn or summed per process: say so (rank 0, once) rather than change it silently."""
        saved, now = ckpt.extra.get("world_size"), self.group.world_size
        if not self.group.is_main or not isinstance(saved, int) or saved == now:
            return
        what = (f"the checkpoint at step {ckpt.step} was written by {saved} process(es) and is resumed by {now}: "
                "every step's global batch (its examples, t, ε and flips) is the one an uninterrupted run draws, "
                "but the gradients are averaged over another split of it, so the weights match such a run's only "
                "to float rounding")
        dropout = float(getattr(self.cfg.model, "dropout", 0.0) or 0.0)
        if dropout == 0.0:
            log.info("%s (no dropout: nothing else changes)", what)
            return
        streams = [f"ranks {saved}..{now - 1} start stream (seed, 'dropout', rank, {ckpt.step})"] if now > saved \
            else [f"the streams of ranks {now}..{saved - 1} are dropped"]
        log.warning("%s; and dropout (model.dropout=%s) is drawn per process, so it is not the uninterrupted "
                    "%d-process run's: ranks 0..%d go on with their own streams, %s. Resume with %d process(es) "
                    "to repeat that run exactly", what, dropout, saved, min(saved, now) - 1, streams[0], saved)

    def _restore_log_window(self, ckpt: Checkpoint) -> None:
        """The log window of the checkpoint's step, so the next row averages the steps an uninterrupted run's does
        (a checkpoint of an older version has none: the window starts empty, as it did)."""
        state = {k.removeprefix(LOG_WINDOW_PREFIX): v for k, v in ckpt.tensors.items()
                 if k.startswith(LOG_WINDOW_PREFIX)}
        if state:
            try:
                self.window.load_state_dict(state)
            except ValueError as e:
                raise CheckpointError(f"the checkpoint in {self.run_dir} cannot resume its log window: {e}") from None
        self.log_row_final = bool(ckpt.extra.get(LOG_ROW_FINAL, False))

    def _restore_rng(self, ckpt: Checkpoint) -> None:
        """This process's dropout stream where the checkpoint left it: its CPU generator and, training on CUDA,
        its GPU's. A state the checkpoint lacks (an older one held rank 0's CPU state only; one written on the CPU
        holds no GPU state) restarts from stream (seed, "dropout", rank, step): deterministic, not the same draws."""
        tc, rank = self.cfg.train, self.group.rank
        cpu_state = ckpt.tensors.get(f"torch_rng_rank{rank}")
        if cpu_state is not None:
            torch.set_rng_state(cpu_state)
        else:
            seed_torch(tc.seed, "dropout", rank, ckpt.step)  # (every device's generator)
        cuda_state = ckpt.tensors.get(f"cuda_rng_rank{rank}")
        if self.device.type != "cuda":
            if cuda_state is not None:
                log.warning("the checkpoint was trained on CUDA and is resumed on %s: dropout goes on from the CPU "
                            "generator, so the resumed run does not repeat the GPU run's dropout", self.device)
        elif cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, self.device)
        elif cpu_state is not None:  # (without it seed_torch has just seeded the GPU with the same stream)
            log.warning("the checkpoint holds no CUDA RNG state for rank %d (written on the CPU or by an older "
                        "version): dropout on %s restarts from stream (seed, 'dropout', %d, %d)",
                        rank, self.device, rank, ckpt.step)
            with torch.cuda.device(self.device):
                torch.cuda.manual_seed(seed_for(tc.seed, "dropout", rank, ckpt.step))

    def _wrap(self, net: nn.Module) -> nn.Module:
        model: nn.Module = net
        if self.group.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        if self.cfg.train.compile:
            model = torch.compile(model)  # type: ignore[assignment]
        return model

    # the loop
    def run(self) -> TrainResult:
        """Train until ``train.total_steps``; checkpoints, logs and grids go into the run directory."""
        with OutputDir(self.run_dir, "train", overwrite=self.overwrite, active=self.group.is_main), self._lock():
            return self._run()

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One writer per run directory (rank 0 holds the lock for all processes of the run)."""
        if not self.group.is_main:
            yield
            return
        with RunLock(self.run_dir):
            if latest_checkpoint(self.run_dir) != self.seen_latest:
                raise ConfigError(f"{self.run_dir} changed while this run was being prepared (another ddpm train "
                                  "wrote it); start again")
            yield

    def _run(self) -> TrainResult:
        tc = self.cfg.train
        result = TrainResult(self.run_dir, self.step, self.step)
        if self.group.is_main:
            for path in self.damaged:
                log.warning("set aside the damaged checkpoint %s as %s", path.name, set_aside_checkpoint(path).name)
            write_text(self.run_dir / "config.json", json.dumps(self.cfg.to_dict(), indent=2))
        # a row the checkpoint's run wrote only because it ended there is logged again when this run reaches a row
        logger = TrainingLog(self.run_dir, self.group.is_main, resume_step=self.step if self.resume_from else None,
                             drop_resume_row=self.log_row_final and self.step < tc.total_steps)
        loader = DataLoader(self.dataset, batch_sampler=_StepBatches(len(self.dataset), tc.batch_size, tc.seed,
                                                                    self.step, tc.total_steps, self.group),
                            num_workers=tc.num_workers,
                            generator=generator(tc.seed, "loader"))  # leaves the global RNG to dropout
        bar = tqdm(total=tc.total_steps, initial=self.step, disable=not (self.progress and self.group.is_main),
                   desc="train", unit="step", dynamic_ncols=True)
        self.window.start = time.perf_counter()  # throughput: images of this process since it started
        self.net.train()
        try:
            for batch in loader:
                x0, y = batch if isinstance(self.dataset, LabelledDataset) else (batch, None)
                loss = self._train_step(x0.to(self.device), self.window, y)
                result.losses.append(loss)
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", img_per_s=f"{self.window.img_per_s():.1f}", refresh=False)
                self._log_row(logger)
                if tc.sample_every and self.step % tc.sample_every == 0:
                    self._sample_grid()
                if self.step % tc.checkpoint_every == 0 or self.step == tc.total_steps:
                    self.save()
        finally:
            bar.close()
            logger.close()
        result.step, result.skipped_steps = self.step, self.skipped
        return result

    def _log_row(self, logger: TrainingLog) -> None:
        """Every ``log_every`` steps a row, and a new window; at the end of the run between two rows, a row of the
        window so far, which is kept (and saved) open: a resumed run logs those steps again in its next row."""
        tc = self.cfg.train
        self.log_row_final = self.step % tc.log_every != 0 and self.step == tc.total_steps
        if self.step % tc.log_every == 0 or self.log_row_final:
            logger.write(self.step, self.window.summary(self._lr(self.step - 1)))
        if self.step % tc.log_every == 0:
            self.window = Window()

    def _lr(self, step: int) -> float:
        return lr_at(step, self.cfg.train.lr, self.cfg.train.warmup_steps)

    def _share(self) -> slice:
        """This process's rows of the global batch (those ``_StepBatches`` gives it)."""
        local = self.cfg.train.batch_size // self.group.world_size
        return slice(self.group.rank * local, (self.group.rank + 1) * local)

    def _global_noise(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, slice]:
        """t with its loss weights (train.t_sampler) for the whole global batch of this step, this process's
        slice of ε ~ N(0, I) for it, and the slice."""
        tc, g = self.cfg.train, generator(self.cfg.train.seed, "training-noise", self.step)
        t, weights = self.t_sampler.draw(tc.batch_size, g)
        noise = torch.randn((tc.batch_size, *shape), generator=g)
        sl = self._share()
        return t, weights, noise[sl].to(self.device), sl

    def _train_step(self, x0: torch.Tensor, window: Window, y: torch.Tensor | None = None) -> float:
        tc = self.cfg.train
        if self.cfg.data.random_flip and x0.ndim == 4:
            # one coin per example of the global batch, stream (seed, "flip", step): N processes flip as one
            x0 = random_flip(x0, generator(tc.seed, "flip", self.step), tc.batch_size, self._share())
        t_all, weights_all, noise, sl = self._global_noise(tuple(x0.shape[1:]))
        t, weights = t_all[sl].to(self.device), weights_all[sl].to(self.device)
        model = self.model
        if y is not None:  # the labels, each dropped to "no class" with probability train.label_dropout
            u = torch.rand(tc.batch_size, generator=generator(tc.seed, "label-dropout", self.step))[sl]
            model = Conditioned(self.model, drop_labels(y.to(self.device), u, tc.label_dropout,
                                                        self.cfg.model.num_classes))
        for group in self.opt.param_groups:
            group["lr"] = self._lr(self.step)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if tc.bf16 else contextlib.nullcontext()
        with autocast:
            terms = self.diffusion.training_losses(model, x0, t, noise, self.decoder)
        loss = (terms.loss * weights).mean()  # weights 1/(T·p_t): unbiased for any p (all 1 for uniform t)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), tc.grad_clip)
        finite = bool(torch.isfinite(loss).item() and torch.isfinite(grad_norm).item())
        if not all_ranks_ok(finite, self.group, self.device):
            return self._non_finite(loss.item(), grad_norm.item())
        self.opt.step()
        self.ema.update(self.net, self.step + 1 - self.skipped)  # optimizer steps applied, this one included
        # every process learns from (and logs) the whole global batch's losses, so all hold the same t-sampler
        losses = all_gather_cat(terms.loss.detach(), self.group)
        if self.t_sampler.learns:
            self.t_sampler.update(t_all, losses)
        window.add(losses, t_all, self.diffusion.T, grad_norm.item(), tc.batch_size, weights_all)
        return loss.item()

    def _non_finite(self, loss: float, grad_norm: float) -> float:
        """Stop (default) or skip the step; no weight, optimizer or EMA state has changed yet."""
        self.opt.zero_grad(set_to_none=True)
        msg = (f"non-finite loss or gradient at step {self.step} (loss={loss}, grad_norm={grad_norm}); "
               "weights, optimizer and EMA were left as they were")
        if self.cfg.train.nonfinite_policy == "skip":
            self.skipped += 1
            log.warning("%s; skipping the step (train.nonfinite_policy='skip')", msg)
            return math.nan
        raise NonFiniteError(msg + f". The last checkpoint in {self.run_dir / 'checkpoints'} is intact; lower "
                             "--lr or use --nonfinite_policy skip")

    # outputs
    def save(self) -> Path | None:
        """Write a checkpoint (rank 0) with everything needed to resume exactly."""
        tensors = {**self._rng_states(),
                   **{f"{T_SAMPLER_PREFIX}{k}": v for k, v in self.t_sampler.state_dict().items()},
                   **{f"{LOG_WINDOW_PREFIX}{k}": v for k, v in self.window.state_dict().items()}}
        path = None
        if self.group.is_main:
            extra = {"data_position": self.step, "skipped_steps": self.skipped, "world_size": self.group.world_size,
                     LOG_ROW_FINAL: self.log_row_final}
            if isinstance(self.dataset, LabelledDataset):
                extra[CLASS_NAMES_KEY] = list(self.dataset.class_names)
            ckpt = Checkpoint(step=self.step, config=self.cfg.to_dict(), model=self.net.state_dict(),
                              ema=self.ema.state_dict(), optimizer=self.opt.state_dict(), tensors=tensors,
                              extra=extra)
            path = save_checkpoint(self.run_dir, ckpt, keep=self.cfg.train.keep_checkpoints)
        barrier(self.group)
        return path

    def _rng_states(self) -> dict[str, torch.Tensor]:
        """Every process's dropout generators (the CPU's; on CUDA the GPU's too), gathered in rank order: rank 0
        writes them all and each process resumes its own (``_restore_rng``)."""
        states = {"torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        out = {}
        for name, state in states.items():  # (a generator's state has the same size in every process)
            parts = all_gather_cat(state.to(self.device), self.group).cpu().view(self.group.world_size, -1)
            out.update({f"{name}_rank{r}": parts[r].clone() for r in range(self.group.world_size)})
        return out

    @contextlib.contextmanager
    def _rng_kept(self) -> Iterator[None]:
        """Torch's global generators (the CPU's and this process's GPU's) as they were before the block: a grid
        or an EMA copy, whose network's initialisation draws from them, must not move the dropout stream."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            yield

    def ema_model(self) -> nn.Module:
        """A fresh network holding the EMA weights, in eval mode; training's random streams are left untouched."""
        with self._rng_kept():
            net = network_for(self.cfg).to(self.device)
        self.ema.copy_to(net)
        return net.eval()

    def _sample_grid(self) -> None:
        if not self.group.is_main or not is_image_model(self.cfg):
            barrier(self.group)
            return
        # the grid changes nothing trained (sample_every is a resumable change): ema_model keeps torch's global
        # generators, and the samples draw from the grid's own stream
        net = self.ema_model()
        shape = (GRID_SAMPLES, *self.cfg.model.sample_shape)
        K = self.cfg.model.num_classes
        x = sample(net, self.diffusion, shape, GlobalNoise(generator(self.cfg.train.seed, "grid")),
                   steps=min(GRID_STEPS, self.diffusion.T), device=self.device,
                   classes=None if K is None else [i % K for i in range(GRID_SAMPLES)])
        save_image_grid(self.run_dir / "samples" / f"step_{self.step:09d}.png", to_display_uint8(x), nrow=8)
        barrier(self.group)


def train(cfg: RunConfig, run_dir: str | Path, *, resume: Resume = False, device: str = DEFAULT_DEVICE,
          progress: bool = True, dataset: Dataset | None = None, overwrite: bool = False) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (Algorithm 1) as one of torchrun's processes, or alone; see ``Trainer``."""
    dev = device_for(device, local_rank())
    with joined(dev) as group:
        return Trainer(cfg, run_dir, resume=resume, device=dev, progress=progress, dataset=dataset,
                       overwrite=overwrite, group=group).run()
