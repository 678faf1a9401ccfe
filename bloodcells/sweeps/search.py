"""Hyperparameter search with current Optuna, driven from a Hydra sweeper.

Why a thin driver and not ``hydra-optuna-sweeper``: its last release (1.3.0) pins
``optuna<3``, two major versions behind, so it cannot share an environment with current
Optuna and its storage schema. This module keeps the same user interface (a search space
in a Hydra config, ``python -m bloodcells.train -m hparams_search=...``) on Optuna >= 4:

- the space uses Hydra's own sweep syntax, parsed by Hydra: ``interval(a, b)``,
  ``tag(log, interval(a, b))``, ``int(interval(a, b))``, ``range(a, b, step)``,
  ``choice(x, y)``; a plain value is a fixed override;
- the study lives in a storage (SQLite by default): re-running the same command resumes it
  and runs only the trials still missing; trials left RUNNING by a killed sweep are failed;
- each job reports its validation curve to its trial (``OptunaPruning`` callback) and stops
  when the pruner says so; the job then leaves ``pruned.json`` and the trial is PRUNED;
- the objective is the validation score of the job's best checkpoint, never a test metric;
- the best trial is written to ``best.yaml`` and ``best_overrides.txt`` (a runnable line).

The Hydra plugin class lives in ``hydra_plugins/bloodcells_sweeper`` (Hydra only loads
sweepers from that namespace) and calls ``run_search`` here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from omegaconf import DictConfig, OmegaConf

from bloodcells.core.compat import job_return_value, parse_override, rebuild_optuna_trial, sweep_types
from bloodcells.core.errors import ConfigError, Pruned

log = logging.getLogger(__name__)

PRUNED_FILE = "pruned.json"


@dataclass(frozen=True)
class Param:
    """One searched override: ``kind`` is float, int or categorical."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)


def parse_space(params: dict[str, Any]) -> tuple[list[Param], list[str]]:
    """Searched parameters and fixed overrides from ``{key: hydra sweep expression}``."""
    ChoiceSweep, IntervalSweep, RangeSweep = sweep_types()
    searched, fixed = [], []
    for key, expression in params.items():
        try:
            override = parse_override(f"{key}={expression}")
        except Exception as err:
            raise ConfigError(f"hydra.sweeper.params.{key}={expression!r}: {err}") from None
        value = override.value()
        tags = getattr(value, "tags", set()) or set()
        if isinstance(value, ChoiceSweep):
            searched.append(Param(key, "categorical", choices=tuple(value.list)))
        elif isinstance(value, IntervalSweep):
            is_int = "int" in tags or (isinstance(value.start, int) and isinstance(value.end, int))
            searched.append(Param(key, "int" if is_int else "float", value.start, value.end, log="log" in tags))
        elif isinstance(value, RangeSweep):
            step = value.step
            kind = "int" if all(float(v).is_integer() for v in (value.start, value.stop, step)) else "float"
            searched.append(Param(key, kind, value.start, value.stop - step, step=step, log="log" in tags))
        else:
            fixed.append(override.input_line)
    if not searched:
        raise ConfigError("hydra.sweeper.params: nothing to search (use interval(...), range(...) or choice(...))")
    return searched, fixed


def problem_key(config: DictConfig, params: dict[str, Any], arguments: list[str]) -> str:
    """A digest of what defines a search problem: the data source, the input size, the model,
    the classes, the search space and the other overrides. A search on other data or another
    model opens its own study in the same storage instead of resuming this one."""
    problem = {
        "data": OmegaConf.to_container(config.data.reader, resolve=True),
        "image_size": config.data.image_size,
        "model": OmegaConf.to_container(config.model, resolve=True),
        "classes": list(config.class_names),
        "space": {k: str(v) for k, v in sorted(params.items())},
        "overrides": sorted(a for a in arguments if not a.startswith(("hydra.", "hydra/", "paths."))),
    }
    return hashlib.blake2b(json.dumps(problem, sort_keys=True, default=str).encode(), digest_size=4).hexdigest()


def seeded_sampler(sampler: Any, trials_done: int) -> Any:
    """The sampler for this run: a configured partial gets ``seed + trials_done``, so a resumed
    study draws new start-up trials instead of replaying the seeded ones it already ran."""
    import optuna

    if sampler is None:
        return optuna.samplers.TPESampler()
    if isinstance(sampler, functools.partial):
        seed = sampler.keywords.get("seed")
        return sampler(seed=None if seed is None else int(seed) + trials_done)
    return sampler


def open_study(study_name: str, storage: str | None, direction: str, pruner: Any) -> Any:
    import optuna

    if storage and storage.startswith("sqlite:///"):
        Path(storage[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction=direction,
        pruner=pruner,
        load_if_exists=True,
    )
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        log.warning("trial %d was left running by an interrupted search: marked failed", trial.number)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return study


def trial_overrides(trial: Any, space: list[Param], storage: str | None, study_name: str) -> list[str]:
    """The job's overrides: its suggested values, and where its pruning callback reports."""
    values = [f"{p.name}={p.suggest(trial)}" for p in space]
    callback = "callbacks.optuna_pruning"
    return [
        *values,
        f"++{callback}.storage={storage}",
        f"++{callback}.study_name={study_name}",
        f"++{callback}.trial={trial.number}",
    ]


def job_outcome(job_return: Any) -> tuple[str, float | None]:
    """(``complete`` | ``pruned`` | ``fail``, value) of one launched job."""
    from hydra.core.utils import JobStatus

    out = Path(job_return.hydra_cfg.hydra.runtime.output_dir)
    if (out / PRUNED_FILE).is_file():
        return "pruned", None
    if job_return.status != JobStatus.COMPLETED:
        return "fail", None
    value = job_return_value(job_return)  # a failed job never gets here
    if value is None:  # the job recorded its own failure (error.txt) and returned nothing
        return "fail", None
    return "complete", float(value)


def write_best(study: Any, sweep_dir: Path, fixed: list[str], arguments: list[str]) -> Path | None:
    """``best.yaml`` (value, params, trial) and ``best_overrides.txt`` (a runnable command)."""
    import optuna

    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    overrides = [*arguments, *fixed, *(f"{k}={v}" for k, v in best.params.items())]
    command = "python -m bloodcells.train " + " ".join(shlex.quote(o) for o in overrides)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "best_overrides.txt").write_text(command + "\n")
    best_yaml = sweep_dir / "best.yaml"
    best_yaml.write_text(
        yaml.safe_dump(
            {
                "study": study.study_name,
                "direction": study.direction.name.lower(),
                "trial": best.number,
                "value": best.value,
                "params": dict(best.params),
                "overrides": overrides,
                "command": command,
            },
            sort_keys=False,
        )
    )
    return best_yaml


class OptunaPruning(pl.Callback):
    """Reports the monitored validation metric of every epoch to the job's Optuna trial and
    stops the job when the pruner prunes it. Without a trial (a run outside a search) it
    does nothing."""

    def __init__(
        self,
        monitor: str,
        pruner: Any = None,
        storage: str | None = None,
        study_name: str | None = None,
        trial: int | None = None,
    ) -> None:
        """``pruner``: the sweeper's (a study loaded from storage does not bring its pruner)."""
        self.monitor, self.pruner = monitor, pruner
        self.storage, self.study_name, self.number = storage, study_name, trial
        self.trial: Any = None

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.number is None or not trainer.is_global_zero:
            return
        import optuna

        pruner = self.pruner if self.pruner is not None else optuna.pruners.NopPruner()
        study = optuna.load_study(study_name=self.study_name, storage=self.storage, pruner=pruner)
        frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == self.number), None)
        if frozen is None:
            raise ConfigError(f"callbacks.optuna_pruning.trial={self.number}: no such trial in {self.storage}")
        self.trial = rebuild_optuna_trial(study, frozen)

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.trial is None or trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise ConfigError(f"callbacks.optuna_pruning.monitor={self.monitor!r} is not logged")
        epoch = trainer.current_epoch
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            out = Path(trainer.default_root_dir)
            (out / PRUNED_FILE).write_text(json.dumps({"epoch": epoch, self.monitor: float(value)}))
            raise Pruned(f"trial {self.number} pruned after epoch {epoch + 1} ({self.monitor}={float(value):.4f})")
