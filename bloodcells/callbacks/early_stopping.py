"""Early stopping that waits for the last fine-tuning stage and the last input size.

Stopping during the frozen phase would skip fine-tuning altogether, so the check only runs
once the last stage has begun, and its patience counts from that stage's first epoch. Under
progressive resizing (``data.progressive``) a model still training on small inputs is
validated at the full size, where its loss is worse than it will be: counting those epochs
could end the run before it ever trains at the full size, so the check also waits for the
epochs that train at ``data.image_size``. Both are functions of the epoch, so resume
restores them exactly.
"""

from __future__ import annotations

import logging
import math

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping

from bloodcells.core.errors import ConfigError

log = logging.getLogger(__name__)


def patience_for(n_val: int) -> int:
    """``patience=auto``: 4 epochs on a validation split of 1,000 images or more; on smaller
    ones the monitored value is noisier (its standard error grows as 1/sqrt(n)), so a real
    plateau takes longer to tell from noise: 4 * sqrt(1000 / n), between 4 and 15."""
    return min(15, max(4, math.ceil(4 * math.sqrt(1000 / max(1, n_val)))))


def training_below_final_size(trainer: pl.Trainer) -> bool:
    """Whether the current epoch trained smaller than the final size of the datamodule's
    progressive-resizing schedule (the size the sampler handed out for it)."""
    datamodule = getattr(trainer, "datamodule", None)
    schedule = getattr(datamodule, "size_schedule", None)
    if schedule is None:
        return False
    trained = datamodule.epoch_sizes.get(trainer.current_epoch)
    return trained is not None and trained != schedule.phases[-1][1]


class StagedEarlyStopping(EarlyStopping):
    """Through Lightning's public hooks: EarlyStopping checks in ``on_validation_end`` (or in
    ``on_train_epoch_end`` with ``check_on_train_epoch_end``); both wait for the last stage.
    ``patience="auto"`` sizes the patience to the validation split (``patience_for``)."""

    def __init__(self, *args, patience: int | str = 3, **kwargs) -> None:
        if patience != "auto" and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 0):
            raise ConfigError(f"callbacks.early_stopping.patience={patience!r}: an integer >= 0, or auto")
        self.auto_patience = patience == "auto"
        self.logged_stop = -1
        """The epoch whose stop was logged (``log_stop``)."""
        super().__init__(*args, patience=4 if self.auto_patience else patience, **kwargs)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        datamodule = trainer.datamodule
        if self.auto_patience and datamodule is not None and hasattr(datamodule, "splits"):
            datamodule.setup()
            n_val = len(datamodule.splits["val"])
            self.patience = patience_for(n_val)
            if trainer.is_global_zero:
                log.info("early stopping: patience %d epochs (%d validation images)", self.patience, n_val)

    def waiting_for_last_stage(self, trainer: pl.Trainer) -> bool:
        """Whether this epoch comes before the last fine-tuning stage or trains below the
        final input size; nothing is counted (nor a best value kept) until neither holds."""
        if training_below_final_size(trainer):
            return True
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
            self.log_stop(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.waiting_for_last_stage(trainer):
            super().on_train_epoch_end(trainer, pl_module)
            self.log_stop(trainer)

    def log_stop(self, trainer: pl.Trainer) -> None:
        """Say why a run ends before its planned length (a time budget's cosine stops with it,
        short of its end): the run's log would otherwise only show fewer epochs than planned."""
        stopped_here = trainer.should_stop and self.stopped_epoch == trainer.current_epoch > self.logged_stop
        if stopped_here and self.wait_count >= self.patience and trainer.is_global_zero:
            self.logged_stop = self.stopped_epoch  # both hooks run in the epoch that stops
            log.info(
                "early stopping: %s has not improved for %d epoch(s) (best %.4f); training ends after epoch %d of %d "
                "(callbacks.early_stopping=null trains the planned length)",
                self.monitor,
                self.wait_count,
                float(self.best_score),
                trainer.current_epoch + 1,
                trainer.max_epochs,
            )
