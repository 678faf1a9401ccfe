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
    assert schedule.relative_cost(0, 10, 128) == (96 / 128) ** 2


def test_each_epoch_trains_at_the_phase_of_its_middle_step():
    # Half the run at 128 px. A 2.09-epoch run (what 5 minutes fit at 96 px on a slow 2-core
    # machine): by its first step the second epoch (0.48 -> 0.96 of the run) would train at
    # 96 px and the last 0.09 epoch alone at 128, 4% of the steps at the size the model is
    # tested at; by its middle step (0.72) it trains at 128 px: 1.09 of 2.09 epochs, 52%.
    schedule = SizeSchedule([[0, 96], [0.5, 128]], 128)
    assert [schedule.epoch_size(e, 2.09) for e in range(3)] == [96, 128, 128]
    # 10.5 epochs: 5 at 96 px and 5.5 at 128, where the first steps would give 6 and 4.5
    assert [schedule.epoch_size(e, 10.5) for e in range(11)] == [96] * 5 + [128] * 6
    # whole epochs split evenly stay as they were: 4 epochs, 2 and 2
    assert [schedule.epoch_size(e, 4) for e in range(4)] == [96, 96, 128, 128]
    assert schedule.epoch_size(12, 10.5) == 128  # past the planned end: the last phase


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
    # 15 minutes, whole epochs; the first epoch (32 px) takes 100 s, validation no time. A
    # 64-px epoch has 4x the area: 400 s. After epoch 0, 800 s are left: 3 epochs fit (the
    # middles of epochs 1 and 2, 0.5 and 0.83 of the run, are in the 64-px phase: 400 + 400 s);
    # 4 would put epoch 1 at 32 px (0.375) and epochs 2-3 at 64: 900 s, over. Timed at 32 px
    # alone, 8 more would seem to fit.
    clock = FakeClock(100.0, 400.0, 400.0)
    monkeypatch.setattr(time_budget, "time", clock)
    overrides = [
        *FAST,
        "trainer.max_epochs=10",
        "callbacks.time_budget.minutes=15",
        "callbacks.time_budget.stop=epoch",
        "callbacks.early_stopping=null",
        "data.image_size=64",
        PHASES,
    ]
    sizes = InputSizes()
    trainer, _ = fit(compose_config("train", overrides, tmp_path), clock, sizes)
    budget = next(c for c in trainer.callbacks if isinstance(c, TimeBudget))
    assert budget.epochs == 3 and trainer.current_epoch == 3
    assert sizes.train == [{32}, {64}, {64}]
    assert clock.now == 900.0


def test_the_resized_fit_is_the_plain_fit_when_every_epoch_costs_the_same():
    # 100 s left, 10 s of training + 2 s of validation an epoch: 8 whole epochs (96 s), and
    # 0.2 of a ninth leaves its validation time (96 + 2 + 2 = 100).
    assert epochs_that_fit_resized(100, 10, 2, 100, done=1, cap=30, cost=lambda e, t: 1.0) == pytest.approx(8.2)
    assert epochs_that_fit_resized(100, 10, 2, 100, done=1, cap=5, cost=lambda e, t: 1.0) == 4.0  # the cap
