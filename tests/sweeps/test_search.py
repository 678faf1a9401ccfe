"""Optuna search from a Hydra config: trials run, persist in SQLite, resume, get pruned."""

from __future__ import annotations

import optuna
import pytest
import yaml

from bloodcells.sweeps.search import parse_space
from tests.helpers import run_train_cli

SEARCH = [
    "-m",
    "hparams_search=lite0",
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=2",
    "callbacks.time_budget=null",
]


def study(db):
    """The one study in ``db`` (its name: the task name and a digest of the problem)."""
    (name,) = optuna.study.get_all_study_names(storage=f"sqlite:///{db}")
    assert name.startswith("search_lite0-")
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


@pytest.mark.slow
def test_a_search_runs_persists_and_resumes_where_it_stopped(tmp_path):
    db = tmp_path / "study.db"
    common = [*SEARCH, f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    run_train_cli(*common, "hydra.sweeper.n_trials=2", log_dir=tmp_path)
    trials = study(db).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert set(trials[0].params) == {"optim.lr", "optim.weight_decay", "loss.label_smoothing", "aug"}
    assert trials[0].params != trials[1].params

    out = run_train_cli(*common, "hydra.sweeper.n_trials=3", log_dir=tmp_path)  # resume: one more trial
    trials = study(db).trials
    assert len(trials) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert out.stdout.count("Launching") <= 1 and "#2 :" in out.stdout and "#0 :" not in out.stdout
    assert "resuming study" in out.stdout + out.stderr
    assert trials[2].params not in (trials[0].params, trials[1].params)  # the seeded sampler did not replay
    # the objective is the job's best val score, the one its summary reports
    job = tmp_path / "sweep" / "2"
    assert trials[2].value == pytest.approx(yaml.safe_load((job / "summary.json").read_text())["best_val_score"])
    best = yaml.safe_load((tmp_path / "sweep" / "best.yaml").read_text())
    assert best["value"] == max(t.value for t in trials)
    line = (tmp_path / "sweep" / "best_overrides.txt").read_text()
    assert line.startswith("python -m bloodcells.train ") and f"optim.lr={best['params']['optim.lr']}" in line


@pytest.mark.slow
def test_a_pruned_trial_is_recorded_as_pruned(tmp_path):
    db = tmp_path / "study.db"
    out = run_train_cli(
        *SEARCH,
        "hydra.sweeper.n_trials=1",
        f"hydra.sweeper.storage=sqlite:///{db}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "~hydra.sweeper.pruner",  # every val score is below 2: ThresholdPruner prunes at once
        "+hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
        "+hydra.sweeper.pruner.lower=2.0",
        log_dir=tmp_path,
    )
    (trial,) = study(db).trials
    assert trial.state == optuna.trial.TrialState.PRUNED and list(trial.intermediate_values) == [0]
    assert (tmp_path / "sweep" / "0" / "pruned.json").is_file() and "pruned after epoch 1" in out.stderr
    summary = (tmp_path / "sweep" / "summary.csv").read_text()
    assert ",pruned," in summary


def test_a_search_on_other_data_or_another_model_gets_its_own_study(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from bloodcells.core.hydra import CONFIG_DIR
    from bloodcells.sweeps.search import problem_key

    def key(*overrides: str) -> str:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", ["hparams_search=lite0", *overrides], return_hydra_config=True)
        return problem_key(cfg, dict(cfg.hydra.sweeper.params), list(overrides))

    base = key("data=npz", "data.reader.path=/data/a.npz")
    assert base == key("data=npz", "data.reader.path=/data/a.npz", "hydra.sweeper.n_trials=40")
    assert base != key("data=npz", "data.reader.path=/data/b.npz")
    assert base != key("data=npz", "data.reader.path=/data/a.npz", "model=tiny")
    assert base != key("data=npz", "data.reader.path=/data/a.npz", "~hydra.sweeper.params.aug")  # another space


def test_search_space_uses_hydra_sweep_syntax():
    space, fixed = parse_space(
        {
            "optim.lr": "tag(log, interval(1e-4, 1e-2))",
            "data.batch_size": "range(16, 80, 16)",
            "aug": "choice(standard, randaug)",
            "seed": "7",
        }
    )
    lr, batch, aug = space
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-4, 1e-2, True)
    assert (batch.kind, batch.low, batch.high, batch.step) == ("int", 16, 64, 16)  # range's stop is exclusive
    assert aug.choices == ("standard", "randaug") and fixed == ["seed=7"]
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    values = [p.suggest(trial) for p in space]
    assert 1e-4 <= values[0] <= 1e-2 and values[1] in (16, 32, 48, 64) and values[2] in ("standard", "randaug")
