"""``model.compile``: run the training step through ``torch.compile`` where it pays.

Only the backbone's training forward (and with it the backward) is compiled, at the start of
training, and dropped at the end of the fit: validation, the TTA comparison, export and
every later command run the same module eagerly, so each sees one graph per fine-tuning
stage (a stage changes which parameters need gradients and which BatchNorm layers train,
and the compiled graph is specialised to both) and no eval-shape recompiles. The compiled
callable is kept outside the module's registered children: the checkpoint, ``state_dict``
keys and exact resume are those of the eager module.

Compiling costs tens of seconds per stage on a CPU, so ``auto`` compiles only where the run
is long enough to win it back (BENCHMARKS.md, "Compiled training"), and only where inductor
can build kernels (a C++ compiler and the Python headers on CPU, triton on CUDA).
"""

from __future__ import annotations

import logging
import shutil
import statistics
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bloodcells.core.errors import ConfigError

log = logging.getLogger("bloodcells.train")

AUTO_MIN_STEPS = 2000
"""``auto`` compiles when the fit plans at least this many optimizer steps: on 2 CPU cores
lite0 recompiles in ~40-60 s per stage and saves ~25% of a ~0.3-s step (BENCHMARKS.md), so
a stage breaks even after ~600-800 steps; the margin covers a staged run's extra stages."""
TIMED_STEPS = 4
"""Steps timed at the start of every epoch: the first minus the median of the rest is the
time spent compiling (zero, up to noise, in an epoch that did not recompile)."""


@dataclass(frozen=True)
class CompileDecision:
    enabled: bool
    reason: str


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


def decide_compile(mode: bool | str, device_type: str, planned_steps: float) -> CompileDecision:
    """Whether this fit compiles, and why (logged at the start of training)."""
    if mode is False:
        return CompileDecision(False, "model.compile=false")
    missing = inductor_missing(device_type)
    if mode is True:
        if missing:
            raise ConfigError(f"model.compile=true: torch.compile cannot build kernels here: {missing}")
        return CompileDecision(True, "model.compile=true")
    if missing:
        return CompileDecision(False, f"model.compile=auto: off, {missing}")
    if planned_steps < AUTO_MIN_STEPS:
        return CompileDecision(
            False,
            f"model.compile=auto: off, {planned_steps:.0f} planned steps < {AUTO_MIN_STEPS} "
            "(compiling would cost more than it saves)",
        )
    return CompileDecision(True, f"model.compile=auto: on, {planned_steps:.0f} planned steps >= {AUTO_MIN_STEPS}")


def compile_backbone(backbone: nn.Module) -> nn.Module:
    """The compiled training forward: static shapes (the training loader drops its last
    partial batch, so every step has one shape)."""
    return torch.compile(backbone, dynamic=False)


class CompileClock:
    """Times the first steps of each epoch to tell the compile time apart from training time."""

    def __init__(self) -> None:
        self.steps: dict[int, list[float]] = {}
        """Durations of the first ``TIMED_STEPS`` optimizer steps of each epoch (loading excluded)."""
        self._started = 0.0

    def step_start(self) -> None:
        self._started = time.perf_counter()

    def step_end(self, epoch: int) -> None:
        steps = self.steps.setdefault(epoch, [])
        if len(steps) < TIMED_STEPS:
            steps.append(time.perf_counter() - self._started)

    def seconds(self, epoch: int) -> float:
        """Seconds ``epoch`` spent compiling: its first step minus a normal one (0 with fewer
        than two timed steps, where there is no normal one to compare with)."""
        steps = self.steps.get(epoch, [])
        return max(0.0, steps[0] - statistics.median(steps[1:])) if len(steps) >= 2 else 0.0

    def log_epoch(self, epoch: int) -> None:
        """One line for an epoch that compiled (rank zero logs it under DDP)."""
        if self.seconds(epoch) >= 1.0:
            log.info(
                "torch.compile: epoch %d spent %.0f s compiling (first step %.1f s, then %.2f s per step)",
                epoch + 1,
                self.seconds(epoch),
                self.steps[epoch][0],
                statistics.median(self.steps[epoch][1:]),
            )
