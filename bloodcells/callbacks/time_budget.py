"""Fit the number of epochs, and the LR schedule with it, to a wall-clock budget.

Lightning's ``max_time`` stops training wherever the clock runs out, with the cosine decay
cut off mid-way at a high learning rate. This callback instead times the first epoch
(validation included) and sets ``max_epochs`` to the whole epochs that fit in the budget
(never more than the configured ``trainer.max_epochs``), so the schedule runs to its end.
The LR of the first epoch followed the configured ``max_epochs``; from then on the cosine
follows the fitted count (a jump of well under 1% of the LR for counts above 5).

The decision is logged with the overrides that repeat it without the clock, travels in
the checkpoint (a resumed run keeps it), and under DDP rank 0 decides for every rank.
"""

from __future__ import annotations

import logging
import math
import time

import lightning.pytorch as pl

from bloodcells.errors import ConfigError
from bloodcells.models.schedulers import StagedLR

log = logging.getLogger("bloodcells.train")


class TimeBudget(pl.Callback):
    def __init__(self, minutes: float) -> None:
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not minutes > 0:
            raise ConfigError(f"callbacks.time_budget.minutes={minutes!r} must be a positive number of minutes")
        self.minutes = float(minutes)
        self.epochs: int | None = None
        """The fitted epoch count, once decided (restored on resume)."""
        self.start = 0.0

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.epochs is not None:  # resumed: the decision was taken in the first run
            self.apply(trainer, self.epochs)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """After the first epoch (and its validation): decide how many epochs fit."""
        cap = trainer.max_epochs
        if self.epochs is not None or cap is None or cap < 1:
            return
        seconds = time.perf_counter() - self.start
        fitted = max(1, min(cap, math.floor(self.minutes * 60 / seconds)))
        self.epochs = int(trainer.strategy.broadcast(fitted, src=0))
        self.apply(trainer, self.epochs)
        why = "trainer.max_epochs" if self.epochs == cap else f"the {self.minutes:g}-minute budget"
        log.info(
            "time budget %g min: the first epoch took %.0f s -> %d epochs (limited by %s). "
            "To repeat this run without the clock: trainer.max_epochs=%d callbacks.time_budget=null",
            self.minutes,
            seconds,
            self.epochs,
            why,
            self.epochs,
        )
        if self.epochs == 1 and cap > 1:
            log.warning("time budget %g min: one epoch takes %.0f s, so only 1 epoch fits", self.minutes, seconds)

    @staticmethod
    def apply(trainer: pl.Trainer, epochs: int) -> None:
        trainer.fit_loop.max_epochs = epochs
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, StagedLR):
                config.scheduler.max_epochs = epochs

    def state_dict(self) -> dict:
        return {"minutes": self.minutes, "epochs": self.epochs}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epochs = state_dict.get("epochs")
