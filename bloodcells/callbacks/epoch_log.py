"""One line per epoch (epoch, train loss, val loss/accuracy, seconds) instead of minutes of
silence when the progress bar is off (``make train``, logs, SLURM)."""

from __future__ import annotations

import logging
import time

import lightning.pytorch as pl

log = logging.getLogger("bloodcells.train")


class EpochLog(pl.Callback):
    def __init__(self) -> None:
        self.start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """Runs after the epoch's validation: train and val metrics are both in."""
        if not trainer.is_global_zero:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        for key, label in (
            ("train/loss", "train loss"),
            ("val/loss", "val loss"),
            ("val/acc", "val acc"),
            ("val/balanced_acc", "val balanced acc"),
        ):
            if key in m:
                parts.append(f"{label} {m[key]:.4f}")
        parts.append(f"{time.perf_counter() - self.start:.0f} s")
        log.info("  ".join(parts))
