"""Accuracy per CPU-minute: the time budget fits the run (whole epochs, or steps stopping
inside an epoch) and the cosine to the clock, the cosine steps every batch, channels_last
changes the layout and not the numbers."""

from __future__ import annotations

import logging
import math

import lightning.pytorch as pl
import pytest
import torch

from bloodcells.callbacks import time_budget
from bloodcells.callbacks.time_budget import TimeBudget
from bloodcells.core.errors import ConfigError
from bloodcells.models.finetune import FinetuneSchedule
from bloodcells.models.schedulers import StagedLR
from tests.helpers import compose_config
from tests.helpers.budget import FAST, FakeClock, fit


class StepLRs(pl.Callback):
    """The head's LR at every training step, per epoch."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self.lrs.append([])

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.lrs[-1].append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("stop", ["epoch", "step"])
def test_time_budget_fits_whole_epochs_and_the_cosine_to_the_budget(tmp_path, monkeypatch, caplog, stop):
    # the first epoch "takes" 100 s: a 5-minute budget holds 3 of the 10 epochs allowed (and
    # no part of a fourth: with stop=step too)
    clock = FakeClock(100.0)
    monkeypatch.setattr(time_budget, "time", clock)
    overrides = ["trainer.max_epochs=10", "callbacks.time_budget.minutes=5", f"callbacks.time_budget.stop={stop}"]
    cfg = compose_config("train", [*FAST, *overrides, "callbacks.early_stopping=null"], tmp_path)
    recorder = StepLRs()
    with caplog.at_level(logging.INFO, logger="bloodcells.train"):
        trainer, _ = fit(cfg, recorder, clock)
    assert trainer.current_epoch == 3 and len(recorder.lrs) == 3
    ended = [r.getMessage() for r in caplog.records if "training ended" in r.getMessage()]
    where = "after 3 epochs" if stop == "epoch" else f"at step {trainer.global_step} (3.00 epochs)"
    assert len(ended) == 1 and f"training ended {where}, 5.0 min after the fit started" in ended[0]
    budget = next(c for c in trainer.callbacks if isinstance(c, TimeBudget))
    assert budget.epochs == 3
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.max_epochs == 3
    # the cosine ends at the fitted end: the last step's LR is one step short of the floor
    steps = len(recorder.lrs[0])
    lr, floor = cfg.optim.lr, cfg.sched.min_factor
    t_last = (3 * steps - 1) / (3 * steps)
    expected = lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t_last)))
    assert recorder.lrs[-1][-1] == pytest.approx(expected, rel=1e-6)
    # the decision travels in the checkpoint
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(state.get("epochs") == 3 for key, state in saved["callbacks"].items() if "TimeBudget" in key)


def test_time_budget_never_raises_the_configured_max_epochs(tmp_path, monkeypatch):
    clock = FakeClock(1.0)  # 1 s per epoch, 30 min budget
    monkeypatch.setattr(time_budget, "time", clock)
    cfg = compose_config("train", [*FAST, "trainer.max_epochs=2", "callbacks.early_stopping=null"], tmp_path)
    trainer, _ = fit(cfg, clock)
    assert trainer.current_epoch == 2


def test_a_slow_first_epoch_does_not_cap_the_step_budget_at_its_own_estimate(tmp_path, monkeypatch):
    """The first epoch 'takes' 100 s (setup, a compile trial), later ones 50 s; 5 minutes.
    Timed on the first alone 3 epochs fit; re-timed after the second (150 s spent, 150 s
    left at 50 s each) 5 fit, and the run trains 5, not the 3 its first estimate allowed."""
    clock = FakeClock(100.0, 50.0)
    monkeypatch.setattr(time_budget, "time", clock)
    overrides = ["trainer.max_epochs=10", "callbacks.time_budget.minutes=5", "callbacks.early_stopping=null"]
    trainer, _ = fit(compose_config("train", [*FAST, *overrides], tmp_path), clock)
    assert trainer.current_epoch == 5 and clock.now == 300.0
    assert trainer.lr_scheduler_configs[0].scheduler.max_epochs == 5


def test_time_budget_refits_when_unfreezing_makes_epochs_slower(tmp_path, monkeypatch):
    # frozen epochs 0-1 take 100 s, unfrozen ones 200 s; 10 minutes. Timed on epoch 0 alone,
    # 6 epochs would fit (1,000 s); timed again at the unfreeze (epoch 2), 400 s are spent
    # and one more 200-s epoch fits: 4 epochs, 600 s.
    clock = FakeClock(100.0, 100.0, 200.0)
    monkeypatch.setattr(time_budget, "time", clock)
    stages = "finetune.stages=[{epoch:0,unfreeze:0},{epoch:2,unfreeze:all,lr_factor:0.1}]"
    cfg = compose_config(
        "train",
        [
            *FAST,
            "finetune=staged",
            stages,
            "trainer.max_epochs=10",
            "callbacks.time_budget.minutes=10",
            "callbacks.early_stopping=null",
        ],
        tmp_path,
    )
    trainer, _ = fit(cfg, clock)
    assert trainer.current_epoch == 4 and clock.now == 600.0
    assert trainer.lr_scheduler_configs[0].scheduler.max_epochs == 4


class StepClock(pl.Callback):
    """``perf_counter`` that moves only where work happens: every training step takes
    ``step_s[epoch]`` (the last value for later epochs), every validation ``validation_s``
    (the sanity check none); it also counts validations and remembers the epoch length."""

    def __init__(self, step_s: list[float], validation_s: float) -> None:
        self.now, self.step_s, self.validation_s = 0.0, step_s, validation_s
        self.validations, self.steps_per_epoch = 0, 0

    def perf_counter(self) -> float:
        return self.now

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.steps_per_epoch = trainer.num_training_batches
        self.now += self.step_s[min(trainer.current_epoch, len(self.step_s) - 1)]

    def on_validation_epoch_start(self, trainer, module) -> None:
        if not trainer.sanity_checking:
            self.now += self.validation_s
            self.validations += 1


def most_steps_within(budget_s: float, steps_per_epoch: int, step_s: float, validation_s: float) -> int:
    """By enumeration: the most steps k with k steps plus one validation per epoch begun in budget."""
    k = 0
    while (k + 1) * step_s + math.ceil((k + 1) / steps_per_epoch) * validation_s <= budget_s:
        k += 1
    return k


def test_step_budget_stops_inside_an_epoch_at_the_deadline_with_the_cosine_ended(tmp_path, monkeypatch):
    # steps of 2.5 s, validations of 6 s, 2 minutes: whole epochs would leave most of an
    # epoch idle; stop=step trains into it, validates the partial epoch and stops in budget
    clock = StepClock([2.5], validation_s=6.0)
    monkeypatch.setattr(time_budget, "time", clock)
    overrides = ["trainer.max_epochs=30", "callbacks.time_budget.minutes=2", "callbacks.early_stopping=null"]
    cfg = compose_config("train", [*FAST, *overrides], tmp_path)
    recorder = StepLRs()
    trainer, _ = fit(cfg, recorder, clock)
    per_epoch = clock.steps_per_epoch
    expected = most_steps_within(120.0, per_epoch, 2.5, 6.0)
    assert expected % per_epoch != 0  # the numbers make the deadline fall inside an epoch
    assert trainer.global_step == expected and clock.now <= 120.0
    assert clock.validations == math.ceil(expected / per_epoch)  # the partial epoch was validated
    budget = next(c for c in trainer.callbacks if isinstance(c, TimeBudget))
    assert budget.stop_step == expected and budget.epochs == pytest.approx(expected / per_epoch)
    lr, floor = cfg.optim.lr, cfg.sched.min_factor
    t_last = (expected - 1) / expected  # the cosine ends at the stopping step, not at an epoch's end
    assert recorder.lrs[-1][-1] == pytest.approx(lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t_last))))
    # the partial epoch's checkpoint is the last one, and the decision travels in it
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == expected
    assert any(s.get("stop_step") == expected for key, s in saved["callbacks"].items() if "TimeBudget" in key)


def test_the_step_a_clocked_run_really_stopped_at_is_logged_where_it_ends(tmp_path, monkeypatch, caplog):
    # ~15 epochs of 14 steps: steps slow by 1% after the first epoch, and each re-fit moves
    # the stopping step by a step or two, under 1% of the run, too little to log as it
    # happens; the last decision logged names a step the run does not stop at, the line
    # logged where training ends names the one it does
    clock = StepClock([1.0, 1.01], validation_s=6.0)
    monkeypatch.setattr(time_budget, "time", clock)
    overrides = ["trainer.max_epochs=30", "callbacks.time_budget.minutes=5", "callbacks.early_stopping=null"]
    cfg = compose_config("train", [*FAST, *overrides], tmp_path)
    with caplog.at_level(logging.INFO, logger="bloodcells.train"):
        trainer, _ = fit(cfg, clock)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("time budget")]
    decided = [line for line in said if " -> " in line]
    assert decided and not decided[-1].endswith(f"steps={trainer.global_step}")
    assert said[-1].startswith(f"time budget 5 min: training ended at step {trainer.global_step} (")
    assert said[-1].endswith(f"callbacks.time_budget.minutes=null callbacks.time_budget.steps={trainer.global_step}")


@pytest.mark.parametrize("stop", ["epoch", "step"])
def test_epochs_that_slow_down_overrun_whole_epochs_but_not_the_step_budget(tmp_path, monkeypatch, stop):
    # the first epoch's steps take 1 s, later ones 2 s (a machine that heats up, a busy
    # neighbour): timed once, whole epochs overrun; re-fitted every epoch, steps do not
    clock = StepClock([1.0, 2.0], validation_s=2.0)
    monkeypatch.setattr(time_budget, "time", clock)
    overrides = ["trainer.max_epochs=30", "callbacks.time_budget.minutes=1.5", f"callbacks.time_budget.stop={stop}"]
    cfg = compose_config("train", [*FAST, *overrides, "callbacks.early_stopping=null"], tmp_path)
    trainer, _ = fit(cfg, clock)
    if stop == "epoch":
        assert clock.now > 90.0
    else:
        assert 90.0 - 2.0 - 2.0 < clock.now <= 90.0  # within one step and one validation of the deadline


def test_a_fixed_step_budget_stops_there_without_a_clock(tmp_path):
    overrides = ["trainer.max_epochs=30", "callbacks.time_budget.minutes=null", "callbacks.time_budget.steps=7"]
    cfg = compose_config("train", [*FAST, *overrides, "callbacks.early_stopping=null"], tmp_path)
    recorder = StepLRs()
    trainer, _ = fit(cfg, recorder)
    per_epoch = trainer.num_training_batches
    assert per_epoch not in (1, 7) and 7 % per_epoch != 0
    assert trainer.global_step == 7 and sum(len(lrs) for lrs in recorder.lrs) == 7
    assert trainer.lr_scheduler_configs[0].scheduler.max_epochs == pytest.approx(7 / per_epoch)


@pytest.mark.parametrize("minutes", [0, -1, "x", True])
def test_time_budget_rejects_a_bad_budget(minutes):
    with pytest.raises(ConfigError, match="callbacks.time_budget.minutes"):
        TimeBudget(minutes)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"minutes": 5, "steps": 100}, "exactly one of minutes"),
        ({}, "exactly one of minutes"),
        ({"steps": 0}, "callbacks.time_budget.steps"),
        ({"minutes": 5, "stop": "batch"}, "callbacks.time_budget.stop"),
    ],
)
def test_time_budget_rejects_a_bad_stop_or_step_count(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TimeBudget(**kwargs)


def test_cosine_steps_every_batch_and_matches_the_epoch_value_at_each_epoch_start(tmp_path):
    cfg = compose_config(
        "train",
        [*FAST, "trainer.max_epochs=3", "callbacks.time_budget=null", "callbacks.early_stopping=null"],
        tmp_path,
    )
    recorder = StepLRs()
    fit(cfg, recorder)
    lr, floor = cfg.optim.lr, cfg.sched.min_factor
    for epoch, lrs in enumerate(recorder.lrs):
        assert len(lrs) > 2
        assert all(a > b for a, b in zip(lrs, lrs[1:]))  # smooth within the epoch
        at_start = lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * epoch / 3)))
        assert lrs[0] == pytest.approx(at_start, rel=1e-6)


def test_fractional_warmup_rises_linearly_over_its_steps():
    schedule = FinetuneSchedule([{"epoch": 0, "unfreeze": "all"}], 1)
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    opt = torch.optim.SGD([{"params": [p]} for p in params], lr=1.0)
    sched = StagedLR(
        opt, schedule, decay="constant", warmup_epochs=0.5, interval="step", steps_per_epoch=1, max_epochs=2
    )
    sched.set_steps_per_epoch(10)  # as the module does once the loader is sized
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(7):
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    # half an epoch = 5 steps of warmup from one step's worth (1/6), then constant
    assert lrs[:5] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])
    assert lrs[5:] == pytest.approx([1.0, 1.0, 1.0])


def test_plateau_refuses_per_step_interval():
    schedule = FinetuneSchedule([{"epoch": 0, "unfreeze": "all"}], 1)
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in range(2)], lr=1.0)
    with pytest.raises(ConfigError, match="sched.interval=epoch"):
        StagedLR(opt, schedule, decay="plateau", interval="step")


def test_channels_last_changes_the_layout_not_the_logits(tmp_path):
    from tests.helpers import tiny_classifier

    nhwc = tiny_classifier(32, channels_last=True).eval()
    nchw = tiny_classifier(32, channels_last=False).eval()
    nchw.load_state_dict(nhwc.state_dict())
    conv = next(m for m in nhwc.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and conv.weight.shape[-1] > 1
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(nhwc(images), nchw(images), rtol=1e-4, atol=1e-5)
