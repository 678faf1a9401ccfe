"""An LR schedule that composes staged fine-tuning with cosine or plateau decay.

``lr_g(t) = base_lr_g * stage_multiplier_g(floor(t)) * decay(t)`` with ``t`` in epochs. With
``steps_per_epoch > 1`` it steps every optimizer step and ``t`` is fractional, so warmup and
cosine are smooth within an epoch (a short budget of 2-5 epochs is otherwise a staircase);
at each epoch's first step it equals the epoch-wise value. The stage
multipliers come from a ``FinetuneSchedule``; ``decay`` is a warmup + cosine curve over the
run, or a ReduceLROnPlateau-style scale that restarts at 1 when a new stage begins (a new
stage brings new trainable weights, so the old plateau says nothing about them). All state
is plain data in ``state_dict`` so a resumed run continues exactly.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from bloodcells.core.compat import set_last_lr
from bloodcells.core.errors import ConfigError
from bloodcells.models.finetune import FinetuneSchedule


def steps_per_epoch(trainer: pl.Trainer) -> int | None:
    """Optimizer steps in one epoch of ``trainer``'s training loader; ``None`` when it has no length."""
    batches = trainer.num_training_batches
    return math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else None


class StagedLR(LRScheduler):
    """Group 0 is the head (multiplier 1); groups 1.. are the backbone blocks in order."""

    def __init__(
        self,
        optimizer: Optimizer,
        schedule: FinetuneSchedule,
        decay: str = "cosine",
        max_epochs: int = 10,
        warmup_epochs: int = 0,
        min_factor: float = 0.01,
        plateau_factor: float = 0.5,
        plateau_patience: int = 2,
        plateau_mode: str = "min",
        monitor: str = "val/loss",
        interval: str = "epoch",
        steps_per_epoch: int = 1,
    ) -> None:
        if decay not in ("cosine", "plateau", "constant"):
            raise ConfigError(f"sched.decay={decay!r} is not allowed; choose cosine, plateau or constant")
        self.stages = [(s.epoch, s.unfreeze, s.lr_factor) for s in schedule.stages]
        self.n_blocks = schedule.n_blocks
        self.decay = decay
        self.max_epochs = max_epochs
        self.warmup_epochs = warmup_epochs
        self.min_factor = min_factor
        self.plateau_factor = plateau_factor
        self.plateau_patience = plateau_patience
        self.plateau_mode = plateau_mode
        self.monitor = monitor
        """The validation metric that plateau decay steps on (Lightning passes it to ``step``)."""
        if interval not in ("step", "epoch"):
            raise ConfigError(f"sched.interval={interval!r} is not allowed; choose step or epoch")
        if decay == "plateau" and interval == "step":
            raise ConfigError(
                "sched.decay=plateau steps once per epoch (on the validation metric): use sched.interval=epoch"
            )
        self.interval = interval
        """How often Lightning steps it: ``step`` (every optimizer step) or ``epoch``."""
        self.steps_per_epoch = steps_per_epoch if interval == "step" else 1
        self.plateau_scale = 1.0
        self.plateau_best: float | None = None
        self.plateau_bad_epochs = 0
        super().__init__(optimizer)

    def _schedule(self) -> FinetuneSchedule:
        return FinetuneSchedule([dict(epoch=e, unfreeze=u, lr_factor=f) for e, u, f in self.stages], self.n_blocks)

    def decay_factor(self, epoch: float) -> float:
        """The decay at (possibly fractional) epoch ``epoch``; warmup is linear over
        ``warmup_epochs``, starting at one step's worth, not at zero."""
        if self.decay == "plateau":
            return self.plateau_scale
        if epoch < self.warmup_epochs:
            step = 1 / self.steps_per_epoch
            return (epoch + step) / (self.warmup_epochs + step)
        if self.decay == "constant":
            return 1.0
        span = max(1, self.max_epochs - self.warmup_epochs)
        t = min(1.0, (epoch - self.warmup_epochs) / span)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * t))

    def set_steps_per_epoch(self, steps: int) -> None:
        """Set the epoch length once the loader is known, and redo the current LRs with it
        (the first step's warmup LR depends on it)."""
        self.steps_per_epoch = max(1, int(steps))
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        set_last_lr(self, lrs)

    def epoch_at(self, step: int) -> float:
        return max(0, step) / self.steps_per_epoch

    def get_lr(self) -> list[float]:
        epoch = self.epoch_at(self.last_epoch)
        multipliers = [1.0, *self._schedule().block_multipliers(int(epoch))]
        if len(multipliers) != len(self.base_lrs):
            raise ValueError(f"StagedLR expects 1 + {self.n_blocks} param groups, optimizer has {len(self.base_lrs)}")
        d = self.decay_factor(epoch)
        return [base * m * d for base, m in zip(self.base_lrs, multipliers)]

    def step(self, metric: float | None = None) -> None:  # type: ignore[override]
        """Advance one step (one epoch if ``steps_per_epoch`` is 1); ``metric`` feeds the plateau decay."""
        if self.decay == "plateau" and metric is not None:
            self._update_plateau(float(metric))
        schedule = self._schedule()
        now, after = int(self.epoch_at(self.last_epoch)), int(self.epoch_at(self.last_epoch + 1))
        if self.last_epoch >= 0 and schedule.phase(after) != schedule.phase(now):
            self.plateau_scale, self.plateau_best, self.plateau_bad_epochs = 1.0, None, 0
        super().step()

    def _update_plateau(self, metric: float) -> None:
        better = (
            self.plateau_best is None
            or (self.plateau_mode == "min" and metric < self.plateau_best)
            or (self.plateau_mode == "max" and metric > self.plateau_best)
        )
        if better:
            self.plateau_best, self.plateau_bad_epochs = metric, 0
            return
        self.plateau_bad_epochs += 1
        if self.plateau_bad_epochs > self.plateau_patience:
            self.plateau_scale *= self.plateau_factor
            self.plateau_bad_epochs = 0
