"""Early stopping that waits for the last fine-tuning stage.

Stopping during the frozen phase would skip fine-tuning altogether, so the check only runs
once the last stage has begun, and its patience counts from that stage's first epoch. Both
are functions of the epoch, so resume restores them exactly.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping


class StagedEarlyStopping(EarlyStopping):
    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        schedule = getattr(trainer.lightning_module, "schedule", None)
        if schedule is not None:
            epoch = trainer.current_epoch
            if schedule.phase(epoch) < schedule.last_phase:
                return
            if epoch == schedule.stages[-1].epoch:
                self.wait_count = 0
        super()._run_early_stopping_check(trainer)
