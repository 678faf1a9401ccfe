"""Early stopping that waits for the last fine-tuning stage.

Stopping during the frozen phase would skip fine-tuning altogether, so the check only runs
once the last stage has begun, and its patience counts from that stage's first epoch. Both
are functions of the epoch, so resume restores them exactly.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping


class StagedEarlyStopping(EarlyStopping):
    """Through Lightning's public hooks: EarlyStopping checks in ``on_validation_end`` (or in
    ``on_train_epoch_end`` with ``check_on_train_epoch_end``); both wait for the last stage."""

    def waiting_for_last_stage(self, trainer: pl.Trainer) -> bool:
        schedule = getattr(trainer.lightning_module, "schedule", None)
        if schedule is None:
            return False
        epoch = trainer.current_epoch
        if schedule.phase(epoch) < schedule.last_phase:
            return True
        if epoch == schedule.stages[-1].epoch:
            self.wait_count = 0
        return False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.waiting_for_last_stage(trainer):
            super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.waiting_for_last_stage(trainer):
            super().on_train_epoch_end(trainer, pl_module)
