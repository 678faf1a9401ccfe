"""Multirun sweeps: the summary, failed jobs as rows, and a re-run that finishes only the
missing jobs."""

from __future__ import annotations

import csv

import pytest

from bloodcells.sweeps.summary import aggregate, without_seed
from tests.helpers import run_train_cli

SWEEP = ["-m", "+trainer.fast_dev_run=true", "callbacks=none", "aug=none,standard", "seed=1,2"]


def read_summary(sweep) -> list[dict]:
    with open(sweep / "summary.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_2x2_sweep_is_summarised_and_a_rerun_finishes_only_the_missing_job(tmp_path):
    sweep = tmp_path / "sweep"
    run_train_cli(*SWEEP, f"hydra.sweep.dir={sweep}", log_dir=tmp_path)
    rows = read_summary(sweep)
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"] and {r["status"] for r in rows} == {"completed"}
    combos = {(o.split("aug=")[1].split()[0], o.split("seed=")[1].split()[0]) for o in (r["overrides"] for r in rows)}
    assert combos == {("none", "1"), ("none", "2"), ("standard", "1"), ("standard", "2")}
    for r in rows:  # the row's metrics are the job's own
        job_metrics = (sweep / r["job"] / "metrics.json").read_text()
        assert f'"accuracy": {float(r["accuracy"])}' in job_metrics.replace("\n", " ").replace("  ", " ")
    pooled = (sweep / "summary.md").read_text().split("Seeds pooled")[1]
    assert pooled.count("| 2 | ") == 2 and (sweep / "summary.png").is_file()  # seeds 1+2 pooled per aug

    (sweep / "3" / "summary.json").unlink()  # job 3 was killed before it finished
    out = run_train_cli(*SWEEP, f"hydra.sweep.dir={sweep}", log_dir=tmp_path)
    assert out.stdout.count("completed earlier, skipped") == 3
    assert [r["status"] for r in read_summary(sweep)] == ["completed"] * 4


@pytest.mark.slow
def test_a_failed_job_is_a_row_not_a_crash(tmp_path):
    sweep = tmp_path / "sweep"
    out = run_train_cli(
        "-m",
        "+trainer.fast_dev_run=true",
        "callbacks=none",
        "data.batch_size=0,8",
        f"hydra.sweep.dir={sweep}",
        log_dir=tmp_path,
        check=False,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    rows = read_summary(sweep)
    assert [r["status"] for r in rows] == ["failed", "completed"]
    assert "data.batch_size=0 must be a positive integer" in rows[0]["error"]


def test_seed_pooling():
    rows = [
        {
            "status": "completed",
            "overrides": "aug=none seed=1",
            "accuracy": 0.9,
            "balanced_accuracy": 0.8,
            "macro_f1": 0.7,
        },
        {
            "status": "completed",
            "overrides": "aug=none seed=2",
            "accuracy": 0.7,
            "balanced_accuracy": 0.6,
            "macro_f1": 0.5,
        },
        {"status": "failed", "overrides": "aug=none seed=3"},
    ]
    assert without_seed("aug=none +seed=3 model=tiny") == "aug=none model=tiny"
    (pooled,) = aggregate(rows)
    assert pooled["n"] == 2 and pooled["accuracy"] == "0.8000 +- 0.1414"


LAUNCHED = ["-m", "+trainer.fast_dev_run=true", "callbacks=none", "seed=1,2"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["submitit_local", "joblib"])
def test_a_2_job_sweep_runs_on_another_launcher(tmp_path, launcher):
    """submitit's local executor (what hydra/launcher=slurm uses, without SLURM) and joblib:
    two jobs in their own processes and dirs, summarised like the basic launcher's."""
    sweep = tmp_path / "sweep"
    workers = ["data.num_workers=2"]  # the default: a loky job must start its loader workers
    run_train_cli(*LAUNCHED, f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}", *workers, log_dir=tmp_path)
    rows = read_summary(sweep)
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert {r["overrides"].split("seed=")[1].split()[0] for r in rows} == {"1", "2"}
    if launcher == "submitit_local":  # the jobs ran under submitit, each with its own log
        assert len(list((sweep / ".submitit").glob("*/*_log.out"))) == 2


def test_slurm_launcher_takes_tasks_from_the_trainer_and_leaves_requeue_to_submitit():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from bloodcells.core.hydra import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            ["hydra/launcher=slurm", "trainer=slurm", "trainer.devices=4", "trainer.num_nodes=2"],
            return_hydra_config=True,
        )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert cfg.hydra.launcher.tasks_per_node == 4 and cfg.hydra.launcher.nodes == 2
    assert cfg.hydra.launcher.max_num_timeout > 0  # submitit requeues
    (env,) = cfg.trainer.plugins
    assert env._target_.endswith("SLURMEnvironment") and env.auto_requeue is False
