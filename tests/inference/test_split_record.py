"""A checkpoint carries the split it was trained with: ``evaluate`` scores the images that
training held out, whatever the config says, and refuses data that changed since."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import SAMPLE_DIR, assert_one_line_error, run_cli, run_train_cli


def sources(predictions: Path) -> set[str]:
    with open(predictions) as f:
        return {row["source"] for row in csv.DictReader(f)}


@pytest.mark.slow
def test_evaluate_scores_the_test_split_of_the_training_run_and_refuses_changed_data(tmp_path):
    data = tmp_path / "cells"
    shutil.copytree(SAMPLE_DIR, data, ignore=shutil.ignore_patterns("*.md"))
    data_args = ["data=folder", f"data.reader.root={data}", "data.reader.cache_dir=null"]
    run_train_cli(*data_args, "data.split_seed=7", "trainer.max_epochs=1", log_dir=tmp_path / "logs")
    summary = json.loads(next((tmp_path / "logs").glob("train/runs/*/summary.json")).read_text())
    held_out = sources(Path(summary["run_dir"]) / "predictions.csv")

    out = run_cli("evaluate", f"ckpt_path={summary['best_checkpoint']}", *data_args, f"paths.log_dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "split_seed=7" in out.stdout + out.stderr  # the configured seed (42) was not used, and the user is told
    evaluated = sources(next(tmp_path.glob("evaluate/runs/*/predictions.csv")))
    assert evaluated == held_out  # with seed 42 most of these would be other images, some of them training ones

    some_image = sorted((data / "lymphocyte").iterdir())[0]
    pixels = np.asarray(Image.open(some_image)).copy()
    Image.fromarray(255 - pixels).save(some_image)  # the data changed since training
    out = run_cli("evaluate", f"ckpt_path={summary['best_checkpoint']}", *data_args, f"paths.log_dir={tmp_path}")
    assert_one_line_error(out, "not the one the model was trained with")
