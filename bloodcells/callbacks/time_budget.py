"""Fit the number of epochs, and the LR schedule with it, to a wall-clock budget.

Lightning's ``max_time`` stops training wherever the clock runs out, with the cosine decay
cut off mid-way at a high learning rate. This callback instead times the first epoch
(validation included) and sets ``max_epochs`` to the whole epochs that fit in the budget
(never more than the configured ``trainer.max_epochs``), so the schedule runs to its end.
The LR of the first epoch followed the configured ``max_epochs``; from then on the cosine
follows the fitted count (a jump of well under 1% of the LR for counts above 5).

Staged fine-tuning changes the cost of an epoch (a frozen backbone needs no backward pass
through it: 36 s against 73 s for lite0 on 2 cores), so the first epoch of every later
stage is timed too and the remaining epochs are re-fitted to what is left of the budget.

With ``model.compile`` the first epoch of a stage also holds the compile; the seconds it
spent compiling (``models.compiled.CompileClock``) are spent from the budget but left out
of what each later epoch is expected to cost.

The decision is logged with the overrides that repeat it without the clock, travels in
the checkpoint (a resumed run keeps it), and under DDP rank 0 decides for every rank.
"""

from __future__ import annotations

import logging
import math
import time

import lightning.pytorch as pl

from bloodcells.core.errors import ConfigError
from bloodcells.models.schedulers import StagedLR

log = logging.getLogger("bloodcells.train")


class TimeBudget(pl.Callback):
    def __init__(self, minutes: float) -> None:
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not minutes > 0:
            raise ConfigError(f"callbacks.time_budget.minutes={minutes!r} must be a positive number of minutes")
        self.minutes = float(minutes)
        self.epochs: int | None = None
        """The fitted epoch count, once decided (restored on resume)."""
        self.start = self.epoch_start = 0.0
        self.spent = 0.0
        """Seconds of the budget used before a resume (restored from the checkpoint)."""

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.start = time.perf_counter() - self.spent
        self.epoch_start = self.start

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.epochs is not None:  # resumed: the decision was taken in the first run
            self.start = self.epoch_start = time.perf_counter() - self.spent  # some strategies restore late
            self.apply(trainer, self.epochs)

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.current_epoch > 0:  # the first epoch is timed from the fit's start (setup included)
            self.epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """After the first epoch (and its validation), and after the first epoch of each later
        fine-tuning stage: fit the remaining epochs into what is left of the budget."""
        cap, epoch = trainer.max_epochs, trainer.current_epoch
        if cap is None or cap < 1 or not (self.epochs is None or epoch in stage_starts(trainer)):
            return
        now = time.perf_counter()
        compiling = compile_seconds(module, epoch)
        seconds, left = now - self.epoch_start - compiling, self.minutes * 60 - (now - self.start)
        fitted = max(epoch + 1, min(cap, epoch + 1 + math.floor(left / seconds)))
        first = self.epochs is None
        self.epochs = int(trainer.strategy.broadcast(fitted, src=0))
        self.apply(trainer, self.epochs)
        why = "trainer.max_epochs" if self.epochs == cap else f"the {self.minutes:g}-minute budget"
        log.info(
            "time budget %g min: %s took %.0f s%s -> %d epochs (limited by %s). "
            "To repeat this run without the clock: trainer.max_epochs=%d callbacks.time_budget=null",
            self.minutes,
            "the first epoch" if first else f"epoch {epoch + 1} (the first of a new fine-tuning stage)",
            seconds,
            f" + {compiling:.0f} s compiling" if compiling else "",
            self.epochs,
            why,
            self.epochs,
        )
        if first and self.epochs == 1 and cap > 1:
            log.warning("time budget %g min: one epoch takes %.0f s, so only 1 epoch fits", self.minutes, seconds)

    @staticmethod
    def apply(trainer: pl.Trainer, epochs: int) -> None:
        trainer.fit_loop.max_epochs = epochs
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, StagedLR):
                config.scheduler.max_epochs = epochs

    def state_dict(self) -> dict:
        return {"minutes": self.minutes, "epochs": self.epochs, "spent": time.perf_counter() - self.start}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epochs = state_dict.get("epochs")
        self.spent = state_dict.get("spent", 0.0)


def stage_starts(trainer: pl.Trainer) -> set[int]:
    """Epochs (after the first) at which a fine-tuning stage changes what trains."""
    return {
        stage[0]
        for config in trainer.lr_scheduler_configs
        if isinstance(config.scheduler, StagedLR)
        for stage in config.scheduler.stages
        if stage[0] > 0
    }


def compile_seconds(module: pl.LightningModule, epoch: int) -> float:
    """Seconds ``epoch`` spent in ``torch.compile`` (``models.compiled.CompileClock``): spent
    from the budget, but not part of what every later epoch costs."""
    compiler = getattr(module, "compiler", None)
    return compiler.clock.seconds(epoch) if compiler is not None else 0.0
