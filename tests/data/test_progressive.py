"""Progressive resizing: small inputs early, the model's input size late and for every
evaluation; the time budget plans the dearer late epochs before it meets them."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest

from bloodcells.callbacks import time_budget
from bloodcells.callbacks.time_budget import TimeBudget, epochs_that_fit_resized
from bloodcells.core.errors import ConfigError
from bloodcells.data.progressive import SizeSchedule
from tests.helpers import compose_config
from tests.helpers.budget import FAST, FakeClock, fit

PHASES = "data.progressive=[[0,32],[0.5,64]]"


class InputSizes(pl.Callback):
    """The height of the batches each training epoch and each validation saw."""

    def __init__(self) -> None:
        self.train: list[set[int]] = []
        self.validation: set[int] = set()

    def on_train_epoch_start(self, trainer, module) -> None:
        self.train.append(set())

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.train[-1].add(batch[0].shape[-1])

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0) -> None:
        self.validation.add(batch[0].shape[-1])


@pytest.mark.parametrize(
    "phases, why",
    [
        ([[0, 32], [0.5, 48]], "must train at data.image_size=64"),
        ([[0.1, 32], [0.5, 64]], "must start at fraction 0"),
        ([[0, 32], [0, 64]], "must increase"),
        ([[0, 32], [1.0, 64]], "must increase from 0 and stay under 1"),
        ([[0, 32.5], [0.5, 64]], "integers"),
        ([0.5, 64], "pairs"),
    ],
)
def test_a_size_schedule_that_cannot_work_is_refused_with_the_reason(phases, why):
    with pytest.raises(ConfigError, match=why):
        SizeSchedule(phases, 64)


def test_the_size_follows_the_phase_the_progress_is_in():
    schedule = SizeSchedule([[0, 96], [0.4, 112], [0.7, 128]], 128)
    assert [schedule.size_at(p) for p in (0.0, 0.39, 0.4, 0.69, 0.7, 1.0)] == [96, 96, 112, 112, 128, 128]
    assert schedule.relative_cost(0.0, 128) == (96 / 128) ** 2


def test_progressive_resizing_trains_small_then_at_the_input_size_and_validates_at_it(tmp_path):
    # 4 epochs, the switch at half the schedule: epochs 0-1 at 32 px, 2-3 at 64; validation
    # always at the model's 64. Default loader workers (2), as users run it: every worker
    # learns the size from the keys the sampler hands out.
    overrides = [
        "model=tiny",
        "trainer.enable_progress_bar=false",
        "callbacks.tta_ensemble=null",
        "callbacks.time_budget=null",
        "callbacks.early_stopping=null",
        "trainer.max_epochs=4",
        "+trainer.limit_train_batches=3",
        "data.image_size=64",
        PHASES,
    ]
    cfg = compose_config("train", overrides, tmp_path)
    assert cfg.data.num_workers == 2
    sizes = InputSizes()
    trainer, model = fit(cfg, sizes)
    assert sizes.train == [{32}, {32}, {64}, {64}]
    assert sizes.validation == {64}
    assert trainer.datamodule.epoch_sizes == {0: 32, 1: 32, 2: 64, 3: 64}
    assert model.hparams.image_size == 64  # what inference resizes to


def test_early_stopping_waits_for_the_epochs_at_the_final_size(tmp_path):
    # A metric that never improves, patience 1, 6 epochs: alone it ends the run after its
    # second epoch (tests/callbacks/test_early_stopping.py). Under [[0,32],[0.5,64]] epochs
    # 0-2 train at 32 px (0, 1/6, 2/6 < 0.5) and do not count; epoch 3 is the first at 64 px
    # and sets the best value, epoch 4 misses it: the run ends after epoch 4, at the full size.
    overrides = [
        *FAST,
        "trainer.max_epochs=6",
        "callbacks.time_budget=null",
        "callbacks.early_stopping.monitor=finetune/phase",  # 0.0 every epoch under finetune=full
        "callbacks.early_stopping.patience=1",
        "+trainer.limit_train_batches=2",
        "data.image_size=64",
        PHASES,
    ]
    sizes = InputSizes()
    trainer, model = fit(compose_config("train", overrides, tmp_path), sizes)
    assert sizes.train == [{32}, {32}, {32}, {64}, {64}]
    assert model.current_epoch == 5 and trainer.should_stop


def test_the_time_budget_plans_the_dearer_late_epochs_of_progressive_resizing(tmp_path, monkeypatch):
    # 10 minutes; the first two epochs (32 px) take 100 s each, validation no time. A 64-px
    # epoch has 4x the area: 400 s. After epoch 0, 500 s are left: 3 epochs fit (the second
    # at 32 px since 1/3 < 0.5, the third at 64: 100 + 400 s); a fourth would put epoch 2 at
    # 64 px (2/4) and overrun. Timed at 32 px alone, 5 more would seem to fit.
    clock = FakeClock(100.0, 100.0, 400.0)
    monkeypatch.setattr(time_budget, "time", clock)
    overrides = [
        *FAST,
        "trainer.max_epochs=10",
        "callbacks.time_budget.minutes=10",
        "callbacks.early_stopping=null",
        "data.image_size=64",
        PHASES,
    ]
    sizes = InputSizes()
    trainer, _ = fit(compose_config("train", overrides, tmp_path), clock, sizes)
    budget = next(c for c in trainer.callbacks if isinstance(c, TimeBudget))
    assert budget.epochs == 3 and trainer.current_epoch == 3
    assert sizes.train == [{32}, {32}, {64}]
    assert clock.now == 600.0


def test_the_resized_fit_is_the_plain_fit_when_every_epoch_costs_the_same():
    # 100 s left, 10 s of training + 2 s of validation an epoch: 8 whole epochs (96 s), and
    # 0.2 of a ninth leaves its validation time (96 + 2 + 2 = 100).
    assert epochs_that_fit_resized(100, 10, 2, 100, done=1, cap=30, cost=lambda p: 1.0) == pytest.approx(8.2)
    assert epochs_that_fit_resized(100, 10, 2, 100, done=1, cap=5, cost=lambda p: 1.0) == 4.0  # the cap
