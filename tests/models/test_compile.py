"""``model.compile``: when auto compiles, that the compiled step computes what the eager one
does, and the budget that does not bill compiling to every later epoch. The staged test
(one graph per stage) and the exact-resume test run under compile too (``test_finetune.py``)."""

from __future__ import annotations

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

from bloodcells.callbacks import time_budget
from bloodcells.callbacks.time_budget import TimeBudget
from bloodcells.core.errors import ConfigError
from bloodcells.models import compiled
from bloodcells.models.compiled import (
    AUTO_MIN_STEPS,
    TRIAL_STEPS,
    TRIAL_WARMUP,
    CompileTrial,
    TrainingCompiler,
    decide_compile,
    inductor_missing,
)
from bloodcells.runs.build import build_model
from tests.helpers import compose_config, fit_with
from tests.helpers.budget import FAST, FakeClock

needs_inductor = pytest.mark.skipif(inductor_missing("cpu") is not None, reason=f"{inductor_missing('cpu')}")


def test_auto_tries_long_runs_where_inductor_builds_kernels(monkeypatch):
    assert decide_compile(False, "cpu", 10**6).enabled is False
    short = decide_compile("auto", "cpu", AUTO_MIN_STEPS - 1)
    assert not short.enabled and not short.trial and f"< {AUTO_MIN_STEPS}" in short.reason
    monkeypatch.setattr(compiled, "inductor_missing", lambda device: None)
    long = decide_compile("auto", "cpu", AUTO_MIN_STEPS)
    assert long.trial and not long.enabled
    resumed = decide_compile("auto", "cpu", AUTO_MIN_STEPS, measured=True)
    assert resumed.enabled and not resumed.trial and "as measured before the resume" in resumed.reason
    monkeypatch.setattr(compiled, "inductor_missing", lambda device: "no C++ compiler (g++, c++ or clang++) on PATH")
    off = decide_compile("auto", "cpu", 10**6)
    assert not off.enabled and not off.trial and "no C++ compiler" in off.reason
    with pytest.raises(ConfigError, match="model.compile=true: torch.compile cannot build kernels here: no C"):
        decide_compile(True, "cpu", 10)


@pytest.mark.parametrize(
    ("eager_s", "compiled_s", "keep"),
    [(0.30, 0.20, True), (0.30, 0.40, False), (0.30, 0.295, False), (0.30, 0.283, False)],
)
def test_the_trial_keeps_compiled_only_when_measured_faster(eager_s, compiled_s, keep):
    """Warm-up steps, then eager ones, then the compiling step (slowest of all, and not
    compared), then compiled ones; within the 10% margin (a measured 1.06x), eager stays."""
    trial = CompileTrial()
    timings = [5.0] * TRIAL_WARMUP + [eager_s] * TRIAL_STEPS + [60.0] + [compiled_s] * TRIAL_STEPS
    verdicts = []
    for seconds in timings:
        assert trial.compile_now == (len(verdicts) == TRIAL_WARMUP + TRIAL_STEPS)
        verdicts.append(trial.record(seconds))
    assert verdicts[:-1] == [None] * (len(timings) - 1) and verdicts[-1] is keep
    compiler = TrainingCompiler("auto")
    compiler.trial, compiler.compiled = trial, torch.nn.Identity()
    line = compiler.settle(keep)
    assert compiler.measured is keep and (compiler.compiled is not None) is keep and compiler.trial is None
    assert line.startswith(f"model.compile=auto: {'on' if keep else 'off'}, measured eager {eager_s:.3f} s/step")


@pytest.mark.parametrize(("seconds_left", "compiles"), [(500.0, False), (700.0, True)])
def test_a_time_budget_too_short_to_win_back_a_compile_ends_the_trial_before_compiling(
    monkeypatch, seconds_left, compiles
):
    """Eager steps take 0.3 s: 500 s left hold 1,667 steps, under AUTO_MIN_STEPS (2,000), so the
    trial ends off without compiling; 700 s hold 2,333, so it compiles and goes on measuring."""
    compile_calls = []
    monkeypatch.setattr(compiled, "inductor_missing", lambda device: None)
    monkeypatch.setattr(compiled, "compile_backbone", lambda backbone: compile_calls.append(backbone) or backbone)
    clock = SteppedClock(0.3, 0.2)
    monkeypatch.setattr(compiled, "time", clock)
    compiler = clock.compiler = TrainingCompiler("auto")
    assert compiler.start(torch.nn.Identity(), "cpu", 10**6).trial
    compiler.seconds_left = lambda: seconds_left
    verdicts = [compiler.step_start(torch.nn.Identity(), 0, i) for i in range(TRIAL_WARMUP + TRIAL_STEPS + 1)]
    assert bool(compile_calls) is compiles
    if compiles:
        assert verdicts == [None] * len(verdicts) and compiler.compiled is not None
        return
    assert verdicts[-1] is False and verdicts[:-1] == [None] * (len(verdicts) - 1)
    line = compiler.settle(False)
    assert compiler.compiled is None and compiler.measured is False
    assert "leaves about 1667 steps at that pace (< 2000" in line and "did not compile" in line


def test_every_rank_follows_rank_zero_on_whether_the_budget_allows_a_compile(monkeypatch):
    """Under DDP rank 0 answers for all: a rank whose own clock says 'too short' still
    compiles when rank 0 says go, so the ranks' trials end at the same step."""
    monkeypatch.setattr(compiled, "inductor_missing", lambda device: None)
    monkeypatch.setattr(compiled, "compile_backbone", lambda backbone: backbone)
    clock = SteppedClock(0.3, 0.2)
    monkeypatch.setattr(compiled, "time", clock)
    compiler = clock.compiler = TrainingCompiler("auto")
    compiler.start(torch.nn.Identity(), "cpu", 10**6)
    compiler.seconds_left = lambda: 10.0
    asked = []

    def rank_zero(answer: bool) -> bool:
        asked.append(answer)
        return False

    for i in range(TRIAL_WARMUP + TRIAL_STEPS + 1):
        assert compiler.step_start(torch.nn.Identity(), 0, i, rank_zero) is None
    assert asked == [True] and compiler.compiled is not None


def test_the_time_budget_tells_the_compiler_the_seconds_left(monkeypatch):
    clock = FakeClock(0.0)
    monkeypatch.setattr(time_budget, "time", clock)
    module = pl.LightningModule()
    module.compiler = TrainingCompiler("auto")
    budget = TimeBudget(minutes=10)
    trainer = SimpleNamespace(max_epochs=30)  # all on_train_start reads of a clocked, fresh run
    budget.on_fit_start(trainer, module)
    budget.on_train_start(trainer, module)
    clock.now += 120.0
    assert module.compiler.seconds_left() == pytest.approx(480.0)


def test_compile_is_true_false_or_auto(train_cfg):
    with pytest.raises(ConfigError, match=r"compile='sometimes': not allowed, expected true, false or auto"):
        build_model(train_cfg("model.compile=sometimes"))


class GraphCount(pl.Callback):
    """Dynamo's count of distinct compiled graphs at the end of every epoch."""

    def __init__(self) -> None:
        self.graphs: list[int] = []

    def on_train_epoch_end(self, trainer, module) -> None:
        self.graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])


@needs_inductor
@pytest.mark.slow
def test_the_compiled_step_computes_the_eager_loss_and_gradients(train_cfg):
    """Same batch, same weights, train mode: the compiled forward and backward agree with the
    eager ones to float reassociation (inductor fuses and reorders sums)."""
    cfg = train_cfg("model.compile=true", "model.drop_rate=0")  # no dropout draws to differ
    model = build_model(cfg).train()
    n, size = cfg.data.batch_size, cfg.data.image_size  # a training batch's shape: the graph the fits compile
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    targets = torch.arange(n) % len(model.class_names)

    def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        model.backbone.load_state_dict(start)  # BN running stats move in train mode
        loss = model.loss(model(images), targets)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    start = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    eager_loss, eager_grads = loss_and_grads()
    model.compiler.compiled = compiled.compile_backbone(model.backbone)
    compiled_loss, compiled_grads = loss_and_grads()
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_budget_bills_compiling_once_not_to_every_epoch(tmp_path, monkeypatch):
    """The first epoch 'takes' 100 s of which 60 s compiled, later ones 40 s: a 5-minute budget
    then holds the first epoch plus 200 s / 40 s = 5 more, not the 3 epochs that 100 s per
    epoch would give."""
    clock = FakeClock(100.0, 40.0)
    monkeypatch.setattr(time_budget, "time", clock)

    class CompiledFor60s(pl.Callback):
        def on_train_start(self, trainer, module) -> None:
            module.compiler.clock.seconds = lambda epoch: 60.0 if epoch == 0 else 0.0

    overrides = [
        *FAST,
        "trainer.max_epochs=10",
        "callbacks.time_budget.minutes=5",
        "callbacks.early_stopping=null",
    ]
    cfg = compose_config("train", overrides, tmp_path)
    model = fit_with(cfg, CompiledFor60s(), clock)
    budget = next(c for c in model.trainer.callbacks if isinstance(c, TimeBudget))
    assert budget.epochs == 6 and model.trainer.current_epoch == 6


class SteppedClock:
    """``perf_counter`` for ``models.compiled``, read once at the start of every step: the
    step before 'took' ``eager_s`` or ``compiled_s`` by whether it ran the compiled forward."""

    def __init__(self, eager_s: float, compiled_s: float) -> None:
        self.now, self.eager_s, self.compiled_s = 0.0, eager_s, compiled_s
        self.compiler = None

    def perf_counter(self) -> float:
        self.now += self.compiled_s if self.compiler.compiled is not None else self.eager_s
        return self.now


@needs_inductor
@pytest.mark.slow
def test_auto_measures_then_keeps_compiled_steps_for_the_rest_of_the_fit(train_cfg, monkeypatch, tmp_path):
    """Eager steps 'take' 0.3 s, compiled ones 0.2 s: the trial keeps compiled, the later
    epochs run the compiled forward, and the last checkpoint carries the verdict."""
    monkeypatch.setattr(compiled, "AUTO_MIN_STEPS", 1)
    monkeypatch.setattr(compiled, "TRIAL_WARMUP", 1)
    monkeypatch.setattr(compiled, "TRIAL_STEPS", 2)  # the tiny split has few steps per epoch
    clock = SteppedClock(0.3, 0.2)
    monkeypatch.setattr(compiled, "time", clock)

    class Capture(pl.Callback):
        def on_train_start(self, trainer, module) -> None:
            clock.compiler = module.compiler

    cfg = train_cfg(
        "model.compile=auto",
        "trainer.max_epochs=5",
        "callbacks=default",
        "callbacks.tta_ensemble=null",
        "callbacks.early_stopping=null",
        "callbacks.time_budget=null",
    )
    model = fit_with(cfg, Capture())
    assert model.compiler.measured is True
    compiled_epochs = sorted(model.compiler.clock.steps)  # epochs with timed compiled steps
    assert compiled_epochs and compiled_epochs == list(range(compiled_epochs[0], 5))
    last = torch.load(next(tmp_path.rglob("last.ckpt")), weights_only=True)
    assert last["compile"] == {"measured": True}
