"""Hand-computed metrics, class weights reaching the loss, early stopping that fires, and the
predict/evaluate CLIs on npz inputs and single files."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bloodcells.callbacks.early_stopping import StagedEarlyStopping
from bloodcells.core.hydra import PROJECT_ROOT
from bloodcells.inference.metrics import compute_metrics
from bloodcells.runs.build import build_datamodule, build_model, build_trainer
from bloodcells.runs.evaluate import evaluate
from tests.helpers import compose_config, run_cli, save_checkpoint, tiny_classifier

SAMPLE = PROJECT_ROOT / "data" / "sample"


def test_compute_metrics_against_hand_computed_values():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.2, 0.7, 0.1], [0.62, 0.28, 0.1]])
    targets = torch.tensor([0, 0, 1, 1])  # class 2 is absent
    out = compute_metrics(probs, targets, ["a", "b", "c"])
    m = out["metrics"]
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["balanced_accuracy"] == pytest.approx(0.5)  # mean recall over the 2 present classes
    assert m["macro_f1"] == pytest.approx(0.5)
    assert m["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.4) + math.log(0.7) + math.log(0.28)) / 4)
    # 15 bins: {0.7, 0.7} correct in [0.667, 0.733); 0.5 wrong in [0.467, 0.533); 0.62 wrong in [0.6, 0.667)
    assert m["ece"] == pytest.approx((2 * 0.3 + 0.5 + 0.62) / 4, abs=1e-6)
    absent = out["per_class"][2]
    assert absent["support"] == 0 and math.isnan(absent["auroc"])
    assert out["confusion_matrix"] == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]


def test_balanced_class_weights_reach_the_loss(tmp_path, make_images):
    labels = np.array([0] * 30 + [1] * 10 + [2] * 10 + [3, 4, 5, 6, 7] * 4)
    np.savez(tmp_path / "d.npz", images=make_images(len(labels), 32), labels=labels)
    cfg = compose_config(
        "train",
        [
            "model=tiny",
            "data=npz",
            f"data.reader.path={tmp_path / 'd.npz'}",
            "data.image_size=32",
            "data.num_workers=0",
            "loss.class_weights=balanced",
            "+trainer.fast_dev_run=true",
            "callbacks=none",
            "logger=csv",
        ],
        tmp_path / "run",
    )
    datamodule, model = build_datamodule(cfg), build_model(cfg)
    build_trainer(cfg).fit(model, datamodule=datamodule)
    counts = np.bincount(datamodule.data.labels[datamodule.splits["train"]], minlength=8)
    expected = torch.tensor(counts.sum() / (8 * counts), dtype=torch.float32)  # n / (k * n_c)
    torch.testing.assert_close(model.class_weight, expected)
    logits, targets = torch.randn(16, 8), torch.arange(16) % 8
    torch.testing.assert_close(model.loss(logits, targets), F.cross_entropy(logits, targets, weight=expected))
    assert not torch.allclose(model.loss(logits, targets), F.cross_entropy(logits, targets))


@pytest.mark.slow
def test_early_stopping_fires_when_validation_stops_improving(tmp_path):
    cfg = compose_config(
        "train",
        [
            "model=tiny",
            "data.num_workers=0",
            "trainer.enable_progress_bar=false",
            "optim.lr=0.0",
            "aug=none",
            "trainer.max_epochs=10",
            "+trainer.limit_train_batches=2",
            "callbacks.early_stopping.patience=2",
            "callbacks.tta_ensemble=null",
            "finetune=full",
        ],
        tmp_path,
    )
    pl.seed_everything(0)
    trainer = build_trainer(cfg)
    trainer.fit(build_model(cfg), datamodule=build_datamodule(cfg))  # lr 0: val loss is flat
    stopper = next(c for c in trainer.callbacks if isinstance(c, StagedEarlyStopping))
    assert stopper.stopped_epoch == 2  # best at epoch 0, no improvement in 1 and 2
    assert trainer.current_epoch == 3 < cfg.trainer.max_epochs


def read_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_predict_cli_on_an_npz_and_on_one_file(tmp_path, make_images):
    ckpt = save_checkpoint(tiny_classifier(), tmp_path / "m.ckpt")
    np.savez(tmp_path / "cells.npz", images=make_images(5, 96))
    out = run_cli("predict", f"ckpt_path={ckpt}", f"input={tmp_path / 'cells.npz'}", f"output={tmp_path / 'a.csv'}")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = read_rows(tmp_path / "a.csv")
    assert [r["source"] for r in rows] == [f"cells.npz[{i}]" for i in range(5)]
    for r in rows:
        p = np.array([float(r[k]) for k in r if k.startswith("p_")])
        assert p.sum() == pytest.approx(1, abs=1e-5) and r["pred"] == tiny_classifier().class_names[int(p.argmax())]
    one = next((SAMPLE / "ig").iterdir())
    out = run_cli("predict", f"ckpt_path={ckpt}", f"input={one}", f"output={tmp_path / 'b.csv'}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert [r["source"] for r in read_rows(tmp_path / "b.csv")] == [one.name]
    assert "1 images ->" in out.stdout


def test_evaluate_on_an_external_npz_scores_every_image(tmp_path, make_images):
    ckpt = save_checkpoint(tiny_classifier(), tmp_path / "m.ckpt")
    labels = np.arange(24) % 8
    np.savez(tmp_path / "external.npz", images=make_images(24, 96), labels=labels.reshape(-1, 1))
    cfg = compose_config(
        "evaluate",
        [
            f"ckpt_path={ckpt}",
            "data=npz",
            f"data.reader.path={tmp_path / 'external.npz'}",
            "split=all",
            "data.num_workers=0",
        ],
        tmp_path / "e",
    )
    metrics = evaluate(cfg)
    rows = read_rows(tmp_path / "e" / "predictions.csv")
    assert metrics["n"] == 24 and [r["source"] for r in rows] == [f"external.npz[{i}]" for i in range(24)]
    assert [r["true"] for r in rows] == [tiny_classifier().class_names[i] for i in labels]
    assert metrics["accuracy"] == pytest.approx(np.mean([r["true"] == r["pred"] for r in rows]))


def test_the_accuracy_interval_is_wilsons():
    """Closed forms: with no success the upper bound is z^2 / (n + z^2), with all successes
    the lower bound is n / (n + z^2); the interval holds the observed proportion."""
    from bloodcells.inference.metrics import wilson_interval

    z2 = 1.96**2
    assert wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + z2), 1.0))
    low, high = wilson_interval(85, 96)
    assert low < 85 / 96 < high
