"""Keeping the best model during training."""

from __future__ import annotations

import math
from pathlib import Path

import pytorch_lightning as pl

from spotdiff.models.checkpoint import save_model


class KeepBestModel(pl.Callback):
    """Write the model (weights only) whenever `monitor` reaches a new best; rank 0 only.

    `val/loss` is minimised, `val/ap50` maximised (the first validation always writes). Records the
    val loss and AP of the kept model either way.
    """

    def __init__(self, path: Path, monitor: str = "val/loss") -> None:
        self.path = Path(path)
        self.monitor = monitor
        self.sign = -1.0 if monitor == "val/ap50" else 1.0
        self.best = math.inf
        self.best_epoch = -1
        self.best_step = -1
        self.kept: dict[str, float] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = self.sign * float(value)
        if value < self.best:
            self.best, self.best_epoch, self.best_step = value, trainer.current_epoch, trainer.global_step
            self.kept = {k: float(trainer.callback_metrics[k]) for k in ("val/loss", "val/ap50")
                         if k in trainer.callback_metrics}
            if trainer.is_global_zero:
                save_model(pl_module.model, self.path)
