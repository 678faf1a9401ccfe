"""Helpers for the time-budget tests: a fast training config, a clock that jumps by a set
duration at each epoch's start, and a fit that returns its trainer."""

from __future__ import annotations

import lightning.pytorch as pl

from tests.helpers import fit_with

FAST = ["model=tiny", "data.num_workers=0", "trainer.enable_progress_bar=false", "callbacks.tta_ensemble=null"]


class FakeClock(pl.Callback):
    """``perf_counter`` that stands still except at each epoch's first batch, where it jumps
    by that epoch's duration: epoch ``e`` 'takes' ``seconds[min(e, -1)]``."""

    def __init__(self, *seconds: float) -> None:
        self.now, self.seconds = 0.0, seconds

    def perf_counter(self) -> float:
        return self.now

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.now += self.seconds[min(trainer.current_epoch, len(self.seconds) - 1)]


def fit(cfg, *callbacks: pl.Callback) -> tuple[pl.Trainer, pl.LightningModule]:
    """``fit_with`` that also returns the trainer (its callbacks hold what a test reads)."""
    model = fit_with(cfg, *callbacks)
    return model.trainer, model
