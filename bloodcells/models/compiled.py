"""``model.compile``: run the training step through ``torch.compile`` where it pays.

Only the backbone's training forward (and with it the backward) is compiled, and dropped at
the end of the fit: validation, the TTA comparison, export and every later command run the
same module eagerly, so a fit sees one graph per fine-tuning stage (a stage changes which
parameters need gradients and which BatchNorm layers train, and the graph is specialised to
both) and no eval-shape recompiles. The compiled callable is kept outside the module's
registered children: the checkpoint, ``state_dict`` keys and exact resume are those of the
eager module.

Whether compiling pays depends on the CPU, not only on the model: the same lite0 step ran
1.27x faster compiled on one 2-core machine and 0.72x as fast on another (BENCHMARKS.md,
"Compiled training"). So ``auto`` measures: on a run long enough to win back a compile, and
where inductor can build kernels (a C++ compiler and the Python headers on CPU, triton on
CUDA), the first epoch times a few eager steps, compiles, times as many compiled steps and
keeps the faster. Under a time budget the plan is the clock's, not ``trainer.max_epochs``: once
the eager steps are timed, a budget that leaves fewer than ``AUTO_MIN_STEPS`` steps at that
pace ends the trial before it compiles (a cold compile cost a 10-minute lite2 run 77 s, 13%
of its budget, to measure 0.80x). The verdict is logged, decided by rank 0 under DDP, and
travels in the checkpoint, so a resumed run does not measure again.
"""

from __future__ import annotations

import logging
import math
import shutil
import statistics
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bloodcells.core.errors import ConfigError

log = logging.getLogger("bloodcells.train")

AUTO_MIN_STEPS = 2000
"""``auto`` tries compiling only when the fit plans at least this many optimizer steps (under a
time budget, also only when the clock leaves this many at the measured eager pace): lite0
compiles in ~30-55 s on 2 CPU cores (BENCHMARKS.md), which a 25% faster ~0.3-s step wins
back in ~600 steps; the margin covers a staged run's recompile per stage."""
TRIAL_WARMUP = 2
"""Steps of the first epoch left untimed by ``auto``'s trial (allocator and loader warm-up)."""
TRIAL_STEPS = 20
"""Steps ``auto`` times eagerly, and then compiled (after the compiling step), to compare:
about 6 s each on 2 cores; 8 were too few to tell a 1.05x from a 0.85x (BENCHMARKS.md)."""
TRIAL_MARGIN = 1.10
"""Compiled must be at least this much faster to be kept: two 20-step medians differ by a few
per cent on 2 CPU cores without any real difference (trials measuring 1.05x and 1.06x kept
compiled runs whose epochs were no faster: BENCHMARKS.md), and a compile that does not pay
still costs its ~55 s."""
TIMED_STEPS = 4
"""Compiled steps timed from the start of every epoch: the first minus the median of the
rest is the time spent compiling (zero, up to noise, in an epoch that did not recompile)."""


@dataclass(frozen=True)
class CompileDecision:
    enabled: bool
    reason: str
    trial: bool = False
    """auto: measure eager against compiled in the first epoch before deciding."""


def inductor_missing(device_type: str) -> str | None:
    """Why inductor cannot build kernels for ``device_type`` here, or None if it can."""
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed"
        return None
    if device_type != "cpu":
        return f"no inductor backend is relied on for {device_type}"
    if not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")):
        return "no C++ compiler (g++, c++ or clang++) on PATH"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "the Python headers (Python.h) are missing"
    return None


def decide_compile(
    mode: bool | str, device_type: str, planned_steps: float, measured: bool | None = None
) -> CompileDecision:
    """Whether this fit compiles, tries both, or not, and why (logged at the start of
    training). ``measured``: an earlier trial's verdict from the checkpoint, if any."""
    if mode is False:
        return CompileDecision(False, "model.compile=false")
    missing = inductor_missing(device_type)
    if mode is True:
        if missing:
            raise ConfigError(f"model.compile=true: torch.compile cannot build kernels here: {missing}")
        return CompileDecision(True, "model.compile=true")
    if missing:
        return CompileDecision(False, f"model.compile=auto: off, {missing}")
    if measured is not None:
        return CompileDecision(
            measured, f"model.compile=auto: {'on' if measured else 'off'}, as measured before the resume"
        )
    if planned_steps < AUTO_MIN_STEPS:
        return CompileDecision(
            False,
            f"model.compile=auto: off, {planned_steps:.0f} planned steps < {AUTO_MIN_STEPS} "
            "(compiling would cost more than it saves)",
        )
    return CompileDecision(
        False,
        f"model.compile=auto: {planned_steps:.0f} planned steps; timing {TRIAL_STEPS} eager and "
        f"{TRIAL_STEPS} compiled steps to decide",
        trial=True,
    )


def compile_backbone(backbone: nn.Module) -> nn.Module:
    """The compiled training forward: static shapes (the training loader drops its last
    partial batch, so every step has one shape)."""
    return torch.compile(backbone, dynamic=False)


class CompileClock:
    """Times the first steps of each epoch to tell the compile time apart from training time."""

    def __init__(self) -> None:
        self.steps: dict[int, list[float]] = {}
        """Durations of the first ``TIMED_STEPS`` compiled steps of each epoch (loading included)."""

    def record(self, epoch: int, seconds: float) -> None:
        steps = self.steps.setdefault(epoch, [])
        if len(steps) < TIMED_STEPS:
            steps.append(seconds)

    def seconds(self, epoch: int) -> float:
        """Seconds ``epoch`` spent compiling: its first step minus a normal one (0 with fewer
        than two timed steps, where there is no normal one to compare with)."""
        steps = self.steps.get(epoch, [])
        return max(0.0, steps[0] - statistics.median(steps[1:])) if len(steps) >= 2 else 0.0

    def log_epoch(self, epoch: int) -> None:
        """One line for an epoch that compiled (rank zero logs it under DDP)."""
        if len(self.steps.get(epoch, [])) >= 2 and self.seconds(epoch) >= 1.0:
            log.info(
                "torch.compile: epoch %d spent %.0f s compiling (first step %.1f s, then %.2f s per step)",
                epoch + 1,
                self.seconds(epoch),
                self.steps[epoch][0],
                statistics.median(self.steps[epoch][1:]),
            )


class CompileTrial:
    """``auto``'s measurement: eager steps, then the compiling step, then compiled steps."""

    def __init__(self) -> None:
        self.eager: list[float] = []
        self.compiled: list[float] = []
        self.steps = 0
        self.budget_steps: float | None = None
        """Set when the time budget left too few steps to try compiling: how many it left."""

    @property
    def compile_now(self) -> bool:
        """True at the step that should run (and compile) the compiled forward first."""
        return self.steps == TRIAL_WARMUP + TRIAL_STEPS

    def record(self, seconds: float) -> bool | None:
        """Time one step; the verdict (keep compiled?) once both sides are measured."""
        if TRIAL_WARMUP <= self.steps < TRIAL_WARMUP + TRIAL_STEPS:
            self.eager.append(seconds)
        elif self.steps > TRIAL_WARMUP + TRIAL_STEPS:  # the compiling step itself is not compared
            self.compiled.append(seconds)
        self.steps += 1
        if len(self.compiled) < TRIAL_STEPS:
            return None
        return statistics.median(self.eager) > TRIAL_MARGIN * statistics.median(self.compiled)

    def steps_that_fit(self, seconds_left: float) -> float:
        """Training steps at the measured eager pace that ``seconds_left`` holds (validation
        left out: an overestimate, so a borderline budget still tries)."""
        return seconds_left / statistics.median(self.eager)

    def summary(self) -> str:
        eager = statistics.median(self.eager)
        if self.budget_steps is not None:
            return (
                f"eager {eager:.3f} s/step; the time budget leaves about {self.budget_steps:.0f} steps at that pace "
                f"(< {AUTO_MIN_STEPS}: compiling would cost more than it saves), so it did not compile"
            )
        compiled = statistics.median(self.compiled)
        return f"eager {eager:.3f} s/step, compiled {compiled:.3f} s/step ({eager / compiled:.2f}x)"


class TrainingCompiler:
    """What a fit does about ``model.compile``: decide, compile, time, forget at the end.

    The module owns one and delegates: ``backbone`` picks the callable for a training
    forward, ``step_start`` times steps and runs ``auto``'s trial."""

    def __init__(self, mode: bool | str) -> None:
        self.mode = mode
        self.measured: bool | None = None
        """``auto``'s verdict once measured (kept in the checkpoint for a resume)."""
        self.compiled: nn.Module | None = None
        """The compiled backbone while this fit uses it."""
        self.clock = CompileClock()
        self.trial: CompileTrial | None = None
        self.seconds_left: Callable[[], float] | None = None
        """The time budget's clock (set by ``callbacks.time_budget.TimeBudget``): seconds of
        training left, which ``auto``'s trial weighs before it compiles."""
        self._last = 0.0
        self._last_compiled = False

    def backbone(self, eager: nn.Module) -> nn.Module:
        return self.compiled if self.compiled is not None else eager

    def start(self, backbone: nn.Module, device_type: str, planned_steps: float) -> CompileDecision:
        decision = decide_compile(self.mode, device_type, planned_steps, self.measured)
        self.trial = CompileTrial() if decision.trial else None
        if decision.enabled:
            self.compiled = compile_backbone(backbone)
        return decision

    def step_start(
        self, backbone: nn.Module, epoch: int, batch_idx: int, agree: Callable[[bool], bool] = bool
    ) -> bool | None:
        """Time the step that just ended, from its start to this one's (waiting for the
        loader included: a compiled step that starves the loader workers of CPU is no faster);
        compile where ``auto``'s trial says so. Returns the trial's local verdict the step
        it ends, else None. ``agree``: rank 0's answer to a question every rank asks at the
        same step (the strategy's broadcast under DDP)."""
        now, verdict = time.perf_counter(), None
        if batch_idx > 0:
            seconds = now - self._last
            if self._last_compiled:
                self.clock.record(epoch, seconds)
            if self.trial is not None:
                verdict = self.trial.record(seconds)
        self._last = now
        if self.trial is not None and self.trial.compile_now:
            budget_steps = self.trial.steps_that_fit(self.seconds_left()) if self.seconds_left else math.inf
            if agree(budget_steps < AUTO_MIN_STEPS):
                self.trial.budget_steps = budget_steps
                verdict = False
            else:
                self.compiled = compile_backbone(backbone)
        self._last_compiled = self.compiled is not None
        return verdict

    def settle(self, keep: bool) -> str:
        """Apply ``auto``'s verdict (rank 0's under DDP); the line to log."""
        summary = self.trial.summary() if self.trial else ""
        self.trial, self.measured = None, keep
        if not keep:
            self.compiled = None
        return f"model.compile=auto: {'on' if keep else 'off'}, measured {summary}"

    def stop(self) -> None:
        self.compiled = None
        self.trial = None

    def state(self) -> dict[str, Any]:
        return {"measured": self.measured}

    def load_state(self, state: dict[str, Any]) -> None:
        self.measured = state.get("measured")
