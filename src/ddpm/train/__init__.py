"""Training: Algorithm 1 with the paper's recipe, checkpoints, resumption and DDP."""

from .ema import EMA
from .trainer import NonFiniteError, Trainer, TrainResult, lr_at, train

__all__ = ["EMA", "NonFiniteError", "TrainResult", "Trainer", "lr_at", "train"]
