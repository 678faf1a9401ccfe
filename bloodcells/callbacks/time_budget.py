"""Fit the length of training, and the LR schedule with it, to a wall-clock budget.

Lightning's ``max_time`` stops training wherever the clock runs out, with the cosine decay
cut off mid-way at a high learning rate. This callback instead times the first epoch
(validation included) and fits the run to what is left, so the schedule runs to its end at
the deadline. Two ways to stop (``stop``):

- ``step`` (the default): the run may end inside an epoch. After every epoch the callback
  re-times one training step and one validation and fits the optimizer step at which the
  run stops, and the cosine's end with it, into what is left of the budget (the last,
  partial epoch is validated and checkpointed like any other). A slower machine gets fewer
  steps of the same schedule, not whole epochs fewer of a longer one; the idle tail that
  whole epochs leave (up to one epoch) is trained, and epochs that slow down as the run goes
  on are caught before they overrun.
- ``epoch``: whole epochs, decided once on the first epoch: ``max_epochs`` becomes the whole
  epochs that fit (a run can end up to one epoch short of the budget, or over it when later
  epochs are slower than the first).

Either way never more than the configured ``trainer.max_epochs``. The LR of the first epoch
followed the configured ``max_epochs``; from then on the cosine follows the fitted length (a
jump of well under 1% of the LR for lengths above 5 epochs; the later re-fits of ``step``
move the end by a few steps). ``steps`` instead of ``minutes`` fixes the stopping step
without a clock: the same schedule on any machine, and the way to repeat a clocked run.

Staged fine-tuning changes the cost of an epoch (a frozen backbone needs no backward pass
through it: 36 s against 73 s for lite0 on 2 cores), so ``epoch`` also re-times the first
epoch of every later stage (``step`` re-times every epoch anyway).

Progressive resizing (``data.progressive``) makes later epochs dearer than the timed one:
the fit costs each epoch not yet run by its input area relative to the timed epoch's
(``SizeSchedule.relative_cost``), with the phases placed on the length being fitted, and
every later epoch re-times it.

With ``model.compile`` the first epoch of a stage also holds the compile; the seconds it
spent compiling (``models.compiled.CompileClock``) are spent from the budget but left out
of what each later epoch is expected to cost. ``model.compile=auto`` reads the seconds left
(``seconds_left``) before its trial compiles: a budget too short to win a compile back is
not spent on one.

The decision is logged with the override that repeats it without the clock (and again where
training ends, with the step it really stopped at), travels in the checkpoint (a resumed run
keeps it), and under DDP rank 0 decides for every rank.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import lightning.pytorch as pl

from bloodcells.core.errors import ConfigError
from bloodcells.data.progressive import SizeSchedule
from bloodcells.models.schedulers import StagedLR, steps_per_epoch

log = logging.getLogger("bloodcells.train")

STOPS = ("step", "epoch")


class TimeBudget(pl.Callback):
    def __init__(self, minutes: float | None = None, stop: str = "step", steps: int | None = None) -> None:
        if (minutes is None) == (steps is None):
            raise ConfigError(
                "callbacks.time_budget: set exactly one of minutes (a clock) and steps (a fixed stopping step)"
            )
        if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0):
            raise ConfigError(f"callbacks.time_budget.minutes={minutes!r} must be a positive number of minutes")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ConfigError(f"callbacks.time_budget.steps={steps!r} must be a positive whole number of steps")
        if stop not in STOPS:
            raise ConfigError(f"callbacks.time_budget.stop={stop!r} is not allowed; choose one of {STOPS}")
        self.minutes = None if minutes is None else float(minutes)
        self.stop = stop
        self.stop_step: int | None = steps
        """The optimizer step at which training stops (``stop=step``), once decided."""
        self.epochs: float | None = None
        """The fitted length in epochs (fractional with ``stop=step``), once decided (restored on resume)."""
        self.start = self.epoch_start = self.validation_start = 0.0
        self.validation_seconds = 0.0
        """The last validation's duration (not the sanity check's)."""
        self.spent = 0.0
        """Seconds of the budget used before a resume (restored from the checkpoint)."""
        self.max_epochs: int | None = None
        """The configured ``trainer.max_epochs``, read before the budget first shortens it: the
        cap of every re-fit (a fitted length is not one: a slow first epoch must not cap the rest)."""

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.start = time.perf_counter() - self.spent
        self.epoch_start = self.start

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.max_epochs = trainer.max_epochs
        compiler = getattr(module, "compiler", None)
        if compiler is not None and self.minutes is not None:  # model.compile=auto weighs its trial against it
            compiler.seconds_left = self.seconds_left
        if self.minutes is None and self.epochs is None:  # a fixed step count: no clock to wait for
            self.fit_to_steps(trainer, self.stop_step)
            log.info("step budget: training stops at step %d (%.2f epochs)", self.stop_step, self.epochs)
        elif self.epochs is not None:  # resumed: the decision was taken in the first run
            self.start = self.epoch_start = time.perf_counter() - self.spent  # some strategies restore late
            self.apply(trainer, self.epochs)

    def seconds_left(self) -> float:
        """Seconds of the clocked budget not yet spent."""
        return self.minutes * 60 - (time.perf_counter() - self.start)

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.current_epoch > 0:  # the first epoch is timed from the fit's start (setup included)
            self.epoch_start = time.perf_counter()

    def on_validation_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.validation_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validation_seconds = time.perf_counter() - self.validation_start

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: object) -> None:
        if self.stop_step is not None and trainer.global_step >= self.stop_step:
            trainer.should_stop = True  # Lightning validates the partial epoch before it stops

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """Fit what is left of the run into what is left of the budget: after every epoch
        (``stop=step``), or after the first epoch and the first of each later fine-tuning
        stage (``stop=epoch``)."""
        cap, epoch = self.max_epochs, trainer.current_epoch
        if self.minutes is None or trainer.should_stop or cap is None or cap < 1:
            return
        first = self.epochs is None
        if self.stop == "epoch" and not (first or epoch in stage_starts(trainer)):
            return
        now = time.perf_counter()
        compiling = compile_seconds(module, epoch)
        seconds, left = now - self.epoch_start - compiling, self.minutes * 60 - (now - self.start)
        per_epoch = steps_per_epoch(trainer) if self.stop == "step" else None
        schedule, validation = size_schedule(trainer), min(self.validation_seconds, seconds)
        if schedule is not None:
            measured = trainer.datamodule.epoch_sizes[epoch]
            more = epochs_that_fit_resized(
                left,
                seconds - validation,
                validation,
                per_epoch or 1,
                done=epoch + 1,
                cap=cap,
                cost=lambda epoch, total: schedule.relative_cost(epoch, total, measured),
            )
        elif per_epoch is None:  # whole epochs
            more: float = math.floor(max(0.0, left) / seconds)
        else:
            more = epochs_that_fit(left, seconds - validation, validation, per_epoch)
        fitted = float(trainer.strategy.broadcast(max(epoch + 1, min(cap, epoch + 1 + more)), src=0))
        before = self.epochs
        if per_epoch is None:
            self.epochs = int(fitted)
            self.apply(trainer, self.epochs)
        else:
            self.fit_to_steps(trainer, round(fitted * per_epoch))
        stage_start = epoch in stage_starts(trainer)
        if first or stage_start or abs(self.epochs - before) >= 0.01 * self.epochs:  # not for a few steps
            size = trainer.datamodule.epoch_sizes[epoch] if schedule is not None else None
            self.log_decision(epoch, first, stage_start, seconds, compiling, cap, size)

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """Log where a clocked run really stopped: re-fits under 1% are not logged as they
        happen, so the last decision's override can be a few steps off the run it repeats."""
        if self.minutes is None or self.epochs is None or not trainer.is_global_zero:
            return
        minutes = (time.perf_counter() - self.start) / 60
        if self.stop_step is None:
            where = f"after {trainer.current_epoch} epochs"
            repeat = repeat_override(epochs=trainer.current_epoch)
        else:
            per_epoch = steps_per_epoch(trainer) or 1
            where = f"at step {trainer.global_step} ({trainer.global_step / per_epoch:.2f} epochs)"
            repeat = repeat_override(steps=trainer.global_step)
        log.info(
            "time budget %g min: training ended %s, %.1f min after the fit started. To repeat this run without "
            "the clock: %s",
            self.minutes,
            where,
            minutes,
            repeat,
        )

    def log_decision(
        self, epoch: int, first: bool, stage_start: bool, seconds: float, compiling: float, cap: int, size: int | None
    ) -> None:
        """What was fitted, on what timing, and the override that repeats it without the clock."""
        timed = "the first epoch" if first else f"epoch {epoch + 1}"
        if stage_start:
            timed += " (the first of a new fine-tuning stage)"
        if size is not None:
            timed += f" at {size} px (later sizes costed by their area)"
        if compiling >= 0.5:  # an epoch that compiled nothing still shows its loader start, under a second
            timed += f" took {seconds:.0f} s + {compiling:.0f} s compiling"
        else:
            timed += f" took {seconds:.0f} s"
        if self.stop_step is None:
            length = f"{self.epochs:g} epochs"
            repeat = repeat_override(epochs=self.epochs)
        else:
            timed += f" ({self.validation_seconds:.0f} s of it validating)"
            length = f"{self.epochs:.2f} epochs, stopping at step {self.stop_step}"
            repeat = repeat_override(steps=self.stop_step)
        why = "trainer.max_epochs" if self.epochs == cap else f"the {self.minutes:g}-minute budget"
        log.info(
            "time budget %g min: %s -> %s (limited by %s). To repeat this run without the clock: %s",
            self.minutes,
            timed,
            length,
            why,
            repeat,
        )
        if first and self.epochs < 2 and cap > 1:
            log.warning(
                "time budget %g min: one epoch takes %.0f s, so only %g fit", self.minutes, seconds, self.epochs
            )

    def fit_to_steps(self, trainer: pl.Trainer, stop_step: int) -> None:
        """Stop at ``stop_step`` and end the cosine there (a loader without a length has no steps to count)."""
        per_epoch = steps_per_epoch(trainer)
        if per_epoch is None:
            raise ConfigError("callbacks.time_budget.steps needs a training loader with a length")
        self.stop_step = max(1, int(stop_step))
        self.epochs = self.stop_step / per_epoch
        self.apply(trainer, self.epochs)

    @staticmethod
    def apply(trainer: pl.Trainer, epochs: float) -> None:
        trainer.fit_loop.max_epochs = math.ceil(epochs)
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, StagedLR):
                config.scheduler.max_epochs = epochs

    def state_dict(self) -> dict:
        return {
            "minutes": self.minutes,
            "epochs": self.epochs,
            "stop_step": self.stop_step,
            "spent": time.perf_counter() - self.start,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.epochs = state_dict.get("epochs")
        self.stop_step = state_dict.get("stop_step", self.stop_step)
        self.spent = state_dict.get("spent", 0.0)


def repeat_override(epochs: float | None = None, steps: int | None = None) -> str:
    """The overrides that repeat a clocked run without the clock: whole epochs, or a stopping step."""
    if steps is not None:
        return f"callbacks.time_budget.minutes=null callbacks.time_budget.steps={steps}"
    return f"trainer.max_epochs={epochs:g} callbacks.time_budget=null"


def epochs_that_fit(left: float, train_seconds: float, validation_seconds: float, steps_per_epoch: int) -> float:
    """The most epochs, in whole steps, whose training plus one validation per epoch begun
    fits in ``left`` seconds: ``r * train + ceil(r) * validation <= left``."""
    if left <= 0 or train_seconds <= 0:
        return 0.0
    whole = math.floor(left / (train_seconds + validation_seconds))
    # whole epochs fit; a part of one more fits if its validation leaves time to train
    part = (left - whole * (train_seconds + validation_seconds) - validation_seconds) / train_seconds
    more = whole + max(0.0, min(1.0, part))
    return math.floor(more * steps_per_epoch) / steps_per_epoch


def epochs_that_fit_resized(
    left: float,
    train_seconds: float,
    validation_seconds: float,
    steps_per_epoch: int,
    done: int,
    cap: int,
    cost: Callable[[int, float], float],
) -> float:
    """``epochs_that_fit`` when epoch ``e`` of a run ``total`` epochs long costs
    ``cost(e, total)`` times the timed one's training (the size schedule places its phases
    on the total being tried). Every length on the step grid up to ``cap`` is tried (a longer
    run can move an epoch into a cheaper phase); the longest that fits is returned as epochs
    beyond ``done``."""
    best = 0.0
    for total_steps in range(done * steps_per_epoch + 1, cap * steps_per_epoch + 1):
        total = total_steps / steps_per_epoch
        seconds, epoch = 0.0, done
        while epoch < total and seconds <= left:
            seconds += min(1.0, total - epoch) * train_seconds * cost(epoch, total) + validation_seconds
            epoch += 1
        if seconds <= left:
            best = total - done
    return best


def size_schedule(trainer: pl.Trainer) -> SizeSchedule | None:
    """The datamodule's progressive-resizing schedule, if it has one."""
    return getattr(getattr(trainer, "datamodule", None), "size_schedule", None)


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
