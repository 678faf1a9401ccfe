"""The shift suite: fixed transforms of a site's own cells, and evaluate's table of them."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from bloodcells.data.readers import read_folder
from bloodcells.data.shifts import SHIFTS, shifted
from bloodcells.data.stain import rgb_to_hed
from bloodcells.runs.evaluate import evaluate
from tests.helpers import SAMPLE_DIR, compose_config, save_checkpoint, tiny_classifier


def test_every_shift_keeps_the_shape_changes_the_pixels_and_repeats():
    cells = read_folder(SAMPLE_DIR).images[::40]
    for name in SHIFTS:
        out = shifted(cells, name)
        assert out.shape == cells.shape and out.dtype == np.uint8, name
        assert not np.array_equal(out, cells), name
        assert np.array_equal(out, shifted(cells, name)), name  # fixed, not random
    assert shifted(cells, "none") is cells


def test_shifts_do_what_their_names_say():
    cells = read_folder(SAMPLE_DIR).images[::40]
    strong = shifted(cells, "stain_strong")
    h_before, h_after = rgb_to_hed(cells[0])[..., 0], rgb_to_hed(strong[0])[..., 0]
    ok = (strong[0] > 0).all(-1) & (strong[0] < 255).all(-1) & (h_before > 0.1)
    assert abs(np.median(h_after[ok] / h_before[ok]) - 1.4) < 0.02
    out = shifted(cells, "zoom_out")  # padded with the border colour, not mirrored cells
    edge = np.concatenate([cells[0][0], cells[0][-1], cells[0][:, 0], cells[0][:, -1]])
    assert np.abs(out[0][0, 0].astype(int) - np.median(edge, axis=0)).max() <= 1
    white = [(shifted(cells, n) >= 250).all(-1).mean() for n in ("none", "overexposed")]
    assert white[1] > white[0] + 0.1


@pytest.mark.slow  # 24 scoring passes
def test_evaluate_writes_the_accuracy_under_every_shift(tmp_path):
    ckpt = save_checkpoint(tiny_classifier(), tmp_path / "m.ckpt")
    for adapt in ("none", "bn"):
        run = tmp_path / adapt
        cfg = compose_config(
            "evaluate", [f"ckpt_path={ckpt}", "shifts=true", f"adapt={adapt}", "data.num_workers=0"], run
        )
        metrics = evaluate(cfg)
        with open(run / "shifts.csv") as f:
            rows = list(csv.DictReader(f))
        assert [r["shift"] for r in rows] == ["none", *SHIFTS]
        assert float(rows[0]["accuracy"]) == metrics["accuracy"]  # the unshifted row is the evaluation itself
        stored = json.loads((run / "metrics.json").read_text())
        assert stored["metrics"]["adapt"] == adapt and len(stored["shifts"]) == len(SHIFTS) + 1
        said = {"none": "Nothing was fitted on the scored images", "bn": "re-estimated on the scored images"}
        assert said[adapt] in (run / "report.html").read_text()
