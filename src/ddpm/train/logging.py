"""The trainer's logs: statistics of the steps since the last row (``Window``), and ``log.csv`` plus TensorBoard
(``TrainingLog``), written by rank 0 and cut back to the checkpoint on a resume."""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from ..outputs import write_text

log = logging.getLogger(__name__)


class Window:
    """Statistics since the last log row: the objective minimised (``loss``: the mean of w·L, w the importance
    weights 1/(T·p_t) of train.t_sampler, all 1 for uniform t), the mean L_t by quartile of t, gradient norm,
    throughput."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.loss_sum = torch.zeros(4, dtype=torch.float64)      # Σ L by quartile of t
        self.weighted_sum = torch.zeros(4, dtype=torch.float64)  # Σ w·L by quartile of t
        self.count = torch.zeros(4, dtype=torch.float64)
        self.grad_norms: list[float] = []
        self.images = 0

    def add(self, losses: torch.Tensor, t: torch.Tensor, T: int, grad_norm: float, images: int,
            weights: torch.Tensor | None = None) -> None:
        """Count one step: its per-example losses at times t (of T) and their loss ``weights`` (None: 1), its
        gradient norm, its global batch size."""
        q = ((t - 1) * 4 // T).clamp(0, 3).cpu()
        self.loss_sum.index_add_(0, q, losses.double().cpu())
        weighted = losses if weights is None else losses * weights.to(losses.device, losses.dtype)
        self.weighted_sum.index_add_(0, q, weighted.double().cpu())
        self.count.index_add_(0, q, torch.ones_like(q, dtype=torch.float64))
        self.grad_norms.append(grad_norm)
        self.images += images

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The window's sums and counts, for a checkpoint: a run resumed between two rows averages the same steps
        as an uninterrupted one. The throughput's images and clock are left out: they measure this process."""
        return {"loss_sum": self.loss_sum.clone(), "weighted_sum": self.weighted_sum.clone(),
                "count": self.count.clone(), "grad_norms": torch.tensor(self.grad_norms, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Continue the window ``state_dict`` saved; ValueError when the tensors are not such a state.

        A window saved before ``weighted_sum`` (ddpm 0.3) continues with its L sums as the w·L sums: exact for
        uniform t, and for importance-sampled t off in that one row only."""
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        grad_norms = shapes.get("grad_norms", ())
        if shapes.keys() - {"weighted_sum"} != {"loss_sum", "count", "grad_norms"} or shapes["loss_sum"] != (4,) \
                or shapes.get("weighted_sum", (4,)) != (4,) or shapes["count"] != (4,) or len(grad_norms) != 1:
            raise ValueError(f"expected loss_sum (4,), weighted_sum (4,), count (4,) and grad_norms (n,), got {shapes}")
        self.loss_sum = state["loss_sum"].double().clone()
        self.weighted_sum = state.get("weighted_sum", state["loss_sum"]).double().clone()
        self.count = state["count"].double().clone()
        self.grad_norms = state["grad_norms"].double().tolist()

    def img_per_s(self) -> float:
        """Training images per second since the window opened."""
        return self.images / max(time.perf_counter() - self.start, 1e-9)

    def summary(self, lr: float) -> dict[str, float]:
        """The log row of the window (NaN where no step fell)."""
        n = self.count.sum().item()
        row = {"loss": self.weighted_sum.sum().item() / n if n else math.nan}
        for i in range(4):
            row[f"loss_t_q{i + 1}"] = (self.loss_sum[i] / self.count[i]).item() if self.count[i] else math.nan
        row["grad_norm"] = sum(self.grad_norms) / len(self.grad_norms) if self.grad_norms else math.nan
        row["lr"] = lr
        row["img_per_s"] = self.img_per_s()
        return row


class TrainingLog:
    """CSV (always) and TensorBoard (when installed) logs, written by rank 0 only."""

    FIELDS = ["step", "loss", "loss_t_q1", "loss_t_q2", "loss_t_q3", "loss_t_q4", "grad_norm", "lr", "img_per_s",
              "wall_s"]

    def __init__(self, run_dir: Path, active: bool, resume_step: int | None, drop_resume_row: bool = False) -> None:
        """``drop_resume_row``: the row at ``resume_step`` was written only because that run ended there, and its
        steps go on in the resumed window (``Window.state_dict``): it is dropped, to be logged at the next row."""
        self.active, self.start = active, time.time()
        self.file = None
        self.tb = None
        if not active:
            return
        path = run_dir / "log.csv"
        kept = None if resume_step is None else resume_step - 1 if drop_resume_row else resume_step  # last row kept
        if kept is not None and path.exists():
            _truncate_log(path, kept, self.FIELDS)  # rows past the checkpoint are logged again
        else:
            write_text(path, ",".join(self.FIELDS) + "\r\n")
        self.file = path.open("a", newline="")
        self.csv = csv.DictWriter(self.file, fieldnames=self.FIELDS)
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events a killed run logged after its checkpoint are dropped, as log.csv's rows are
            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=None if kept is None else kept + 1)
        except ImportError:
            log.info("tensorboard is not installed: logging to log.csv only (pip install tensorboard)")

    def write(self, step: int, row: dict[str, float]) -> None:
        """Append the row of ``step`` to log.csv (flushed) and to TensorBoard."""
        if not self.active or self.file is None:
            return
        self.csv.writerow({"step": step, **row, "wall_s": time.time() - self.start})
        self.file.flush()
        if self.tb is not None:
            for k, v in row.items():
                self.tb.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        """Close the files."""
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def _truncate_log(path: Path, step: int, fields: list[str]) -> None:
    """Keep the rows of ``log.csv`` up to ``step`` (the checkpoint resumed from), rewritten atomically."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if _row_step(r) <= step]
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def _row_step(row: dict[str, Any]) -> float:
    try:
        return int(row.get("step") or "")
    except ValueError:
        return math.inf  # a torn last line from a killed run
