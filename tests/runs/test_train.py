"""End to end: fast_dev_run, then a short real run whose checkpoint evaluate and predict reuse."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bloodcells.core.hydra import PROJECT_ROOT
from bloodcells.inference.checkpoints import load_classifier
from bloodcells.runs.evaluate import evaluate
from bloodcells.runs.predict import predict
from bloodcells.runs.train import train
from tests.helpers import compose_config, run_train_cli


def test_fast_dev_run_trains_and_tests_tiny_model(train_cfg):
    cfg = train_cfg("+trainer.fast_dev_run=true", "callbacks=none")
    metrics = train(cfg)
    assert metrics["n"] == 96  # every image of the sample's test split, once
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert saved["metrics"]["accuracy"] == metrics["accuracy"]
    assert sum(map(sum, saved["confusion_matrix"])) == 96


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_short_run_then_evaluate_and_predict_agree_with_test_step(train_cfg, tmp_path):
    cfg = train_cfg("trainer.max_epochs=3", "finetune=full")
    metrics = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    for name in ("metrics.json", "per_class.csv", "predictions.csv", "confusion_matrix.png", "checkpoints/last.ckpt"):
        assert (run_dir / name).is_file(), name
    assert "Not a medical device" in (run_dir / "MODEL_CARD.md").read_text()
    assert (run_dir / "risk_coverage.png").is_file()
    test_rows = read_csv(run_dir / "predictions.csv")
    assert len(test_rows) == metrics["n"] == 96
    saved = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert saved["accuracy"] == pytest.approx(metrics["accuracy"])

    ckpt = metrics["best_checkpoint"]
    eval_dir = tmp_path / "eval"
    eval_cfg = compose_config("evaluate", [f"ckpt_path={ckpt}", "data.num_workers=0"], eval_dir)
    eval_metrics = evaluate(eval_cfg)
    eval_rows = read_csv(eval_dir / "predictions.csv")
    assert [r["source"] for r in eval_rows] == [r["source"] for r in test_rows]
    assert [r["pred"] for r in eval_rows] == [r["pred"] for r in test_rows]
    # the sets and foreign-image scores the checkpoint stores give evaluate the test step's columns
    for column in ("prediction_set", "abstain", "in_distribution"):
        assert [r[column] for r in eval_rows] == [r[column] for r in test_rows], column
    np.testing.assert_allclose(
        [float(r["ood_score"]) for r in eval_rows], [float(r["ood_score"]) for r in test_rows], rtol=1e-3
    )
    probs = lambda rows: np.array([[float(r[k]) for k in r if k.startswith("p_")] for r in rows])  # noqa: E731
    np.testing.assert_allclose(probs(eval_rows), probs(test_rows), atol=1e-5)
    assert eval_metrics["accuracy"] == pytest.approx(metrics["accuracy"])

    # predict on the test images as files: same probabilities as the test step
    sample = PROJECT_ROOT / "data" / "sample"
    images_dir = tmp_path / "images"
    for r in test_rows[:20]:
        dest = images_dir / r["source"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((sample / r["source"]).read_bytes())
    pred_cfg = compose_config("predict", [f"ckpt_path={ckpt}", f"input={images_dir}"], tmp_path / "pred")
    pred_rows = {r["source"]: r for r in read_csv(predict(pred_cfg))}
    for r in test_rows[:20]:
        assert pred_rows[r["source"]]["pred"] == r["pred"]
        np.testing.assert_allclose(probs([pred_rows[r["source"]]]), probs([r]), atol=1e-5)


@pytest.mark.slow
def test_checkpoint_carries_what_predict_needs(train_cfg):
    cfg = train_cfg("trainer.max_epochs=1", "finetune=full", "test=false")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    model = load_classifier(str(ckpt))
    assert model.class_names[3] == "ig" and model.hparams.image_size == 96
    assert model.hparams.backbone == "test_efficientnet"
    x = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    assert model(x).shape == (2, 8)


@pytest.mark.slow
def test_cli_writes_one_run_dir_and_prints_summary(tmp_path):
    out = run_train_cli("+trainer.fast_dev_run=true", "callbacks=none", log_dir=tmp_path)
    runs = list((tmp_path / "train" / "runs").iterdir())
    assert len(runs) == 1
    assert f"Run dir: {runs[0]}" in out.stdout
    assert (runs[0] / ".hydra" / "config.yaml").is_file() and (runs[0] / "metrics.json").is_file()


@pytest.mark.parametrize("experiment", ["report_a", "report_b", "report_densenet"])
def test_report_experiments_run_with_a_tiny_backbone(train_cfg, experiment):
    cfg = train_cfg(f"experiment={experiment}", "model=tiny", "+trainer.fast_dev_run=true", "callbacks=none")
    assert cfg.task_name == experiment
    assert cfg.model.backbone == "test_efficientnet"
    assert cfg.finetune.stages[0].unfreeze == 0  # the reports' frozen first phase
    metrics = train(cfg)
    assert metrics["n"] == 96


def test_weighted_sampler_and_focal_loss_train(train_cfg):
    cfg = train_cfg("data.sampler=weighted", "loss=focal", "aug=mixed", "+trainer.fast_dev_run=true", "callbacks=none")
    assert train(cfg)["n"] > 0


@pytest.mark.parametrize("kind", ["npz", "folder", "medmnist"])
def test_every_reader_config_builds_a_datamodule(kind, tmp_path, make_images):
    from bloodcells.runs.build import build_datamodule

    labels = (np.arange(40) % 8).reshape(40, 1)
    if kind == "npz":
        np.savez(tmp_path / "d.npz", images=make_images(40, 96), labels=labels)
        overrides = ["data=npz", f"data.reader.path={tmp_path / 'd.npz'}"]
    elif kind == "medmnist":
        np.savez(
            tmp_path / "m.npz",
            **{f"{s}_images": make_images(40, 28) for s in ("train", "val", "test")},
            **{f"{s}_labels": labels for s in ("train", "val", "test")},
        )
        overrides = ["data=medmnist", f"data.reader.path={tmp_path / 'm.npz'}", "data.image_size=28"]
    else:
        overrides = ["data=folder", f"data.reader.root={PROJECT_ROOT / 'data' / 'sample'}"]
    dm = build_datamodule(compose_config("train", [*overrides, "data.num_workers=0"], tmp_path / "run"))
    dm.setup()
    images, targets, index = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape[1] == 3
    if kind == "medmnist":
        assert len(dm.splits["test"]) == 40  # the official split is kept


@pytest.mark.slow
def test_multirun_writes_one_dir_per_job(tmp_path):
    run_train_cli("-m", "aug=none,standard", "+trainer.fast_dev_run=true", "callbacks=none", log_dir=tmp_path)
    sweeps = list((tmp_path / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p.name for p in sweeps[0].iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    for job in jobs:
        assert (sweeps[0] / job / "metrics.json").is_file()
    assert not (tmp_path / "train" / "runs").exists()


@pytest.mark.slow
def test_cli_bad_input_gives_one_line_not_a_stack_trace(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 96, 96, 3), np.uint8), labels=np.array([0, 1, 9, 2]))
    out = run_train_cli("data=npz", f"data.reader.path={tmp_path / 'bad.npz'}", log_dir=tmp_path, check=False)
    assert out.returncode == 2
    assert "bad.npz: label 9 at index 2 is outside the class range 0..7" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_cli_prints_one_line_per_epoch_without_lightning_noise(tmp_path):
    out = run_train_cli("trainer.max_epochs=2", "+trainer.limit_train_batches=2", log_dir=tmp_path)
    text = out.stdout + out.stderr
    for epoch in (1, 2):
        assert f"epoch {epoch}/2  train loss " in text and "val balanced acc" in text
    assert "💡 Tip" not in text and "litlogger" not in text and "LeafSpec" not in text
    shown = re.search(r"python -m bloodcells\.serve ckpt_path=(\S+)", out.stdout)  # the next step it offers
    assert shown and Path(shown.group(1)).is_file(), out.stdout[-1500:]


@pytest.mark.parametrize(
    "logger, package, artefact", [("tensorboard", "tensorboard", "tensorboard"), ("mlflow", "mlflow", "mlruns")]
)
def test_optional_loggers_write_their_files(train_cfg, tmp_path, logger, package, artefact):
    pytest.importorskip(package)  # the 'logging' extra; CSV logging (the default) is tested everywhere
    cfg = train_cfg(f"logger={logger}", "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "callbacks=none")
    train(cfg)
    root = Path(cfg.paths.output_dir) if logger == "tensorboard" else Path(cfg.paths.log_dir)
    assert any((root / artefact).rglob("*")), f"nothing under {root / artefact}"
