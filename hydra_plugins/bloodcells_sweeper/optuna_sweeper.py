"""``hydra/sweeper=optuna``: an Optuna study as a Hydra sweeper (the logic is in
``bloodcells.search``; see there why it is not ``hydra-optuna-sweeper``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from bloodcells.sweeps.search import (
    job_outcome,
    open_study,
    parse_space,
    problem_key,
    seeded_sampler,
    trial_overrides,
    write_best,
)

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        params: dict[str, Any],
        n_trials: int = 20,
        n_jobs: int = 1,
        direction: str = "maximize",
        study_name: str = "bloodcells",
        storage: str | None = None,
        sampler: Any = None,
        pruner: Any = None,
    ) -> None:
        """``sampler`` and ``pruner`` arrive built (Hydra instantiates the sweeper's config
        recursively); None = Optuna's default sampler, no pruning."""
        self.params = dict(params or {})
        self.n_trials, self.n_jobs, self.direction = n_trials, max(1, n_jobs), direction
        self.study_name, self.storage = study_name, storage
        self.sampler, self.pruner = sampler, pruner
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list:
        import optuna

        space, fixed = parse_space(self.params)
        pruner = self.pruner if self.pruner is not None else optuna.pruners.NopPruner()
        name = f"{self.study_name}-{problem_key(self.config, self.params, arguments)}"
        study = open_study(name, self.storage, self.direction, pruner)
        study.sampler = seeded_sampler(self.sampler, len(study.trials))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        done = len(study.trials)
        if done:
            log.info(
                "resuming study %r in %s: %d trials done, %d to go", name, self.storage, done, self.n_trials - done
            )
        else:
            log.info("new study %r in %s", name, self.storage)
        returns = []
        while len(study.trials) < self.n_trials:
            trials = [study.ask() for _ in range(min(self.n_jobs, self.n_trials - len(study.trials)))]
            batch = [[*arguments, *fixed, *trial_overrides(t, space, self.storage, name)] for t in trials]
            results = self.launcher.launch(batch, initial_job_idx=trials[0].number)
            for trial, result in zip(trials, results):
                outcome, value = job_outcome(result)
                state = {"pruned": optuna.trial.TrialState.PRUNED, "fail": optuna.trial.TrialState.FAIL}.get(outcome)
                if state is None:
                    study.tell(trial, value)
                else:
                    study.tell(trial, state=state)
                log.info("trial %d: %s%s", trial.number, outcome, f" {value:.4f}" if value is not None else "")
            returns.append(results)
        best = write_best(study, sweep_dir, fixed, arguments)
        if best is not None:
            print(
                f"Best trial {study.best_trial.number}: {study.best_value:.4f}; "
                f"{best} and {best.with_name('best_overrides.txt')}"
            )
        return returns
