"""predict and evaluate as a user runs them, on a checkpoint that carries conformal
calibration and a foreign-image score: the new columns agree with the library, a blank
frame is flagged, and the exported submission outputs the same score."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bloodcells.inference.checkpoints import load_classifier
from bloodcells.inference.conformal import ConformalSets
from bloodcells.inference.ensemble_file import load_predictor
from bloodcells.inference.tta import NO_TTA
from tests.helpers import calibrated_checkpoint, loader_of, run_cli, sample_cells


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path, probs = calibrated_checkpoint(tmp_path_factory.mktemp("unc") / "m.ckpt")
    cells, _ = sample_cells()
    folder = tmp_path_factory.mktemp("input")
    for i, name in enumerate(["a", "b", "c"]):
        Image.fromarray(cells[i * 20]).save(folder / f"{name}.png")
    Image.fromarray(np.full((96, 96, 3), 255, np.uint8)).save(folder / "blank.png")
    return path, folder, probs


def test_predict_writes_sets_scores_and_abstain_that_agree_with_the_library(checkpoint, tmp_path):
    path, folder, stored = checkpoint
    out = run_cli(
        "predict",
        f"ckpt_path={path}",
        f"input={folder}",
        f"output={tmp_path / 'p.csv'}",
        "conformal.alpha=0.1",
        f"hydra.run.dir={tmp_path}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["source"]: r for r in csv.DictReader(open(tmp_path / "p.csv"))}
    predictor = load_predictor(path)
    names = predictor.class_names
    sets = ConformalSets.fit(stored, stored.argmax(1), 0.1, "lac", True)
    for row in rows.values():
        probs = torch.tensor([[float(row[f"p_{c}"]) for c in names]])
        expected = [c for c, inside in zip(names, sets.sets(probs)[0]) if inside]
        assert row["prediction_set"].split("|") == expected or (row["prediction_set"] == "" and not expected)
        in_dist = float(row["ood_score"]) <= 1
        assert row["in_distribution"] == str(in_dist)
        assert row["abstain"] == str(len(expected) != 1 or not in_dist)
    assert rows["blank.png"]["in_distribution"] == "False"  # a blank frame is no cell
    image = np.asarray(Image.open(folder / "a.png").convert("RGB"))[None]
    direct = predictor.predict(loader_of(image, np.zeros(1, np.int64), 1))["ood"]
    assert float(rows["a.png"]["ood_score"]) == pytest.approx(float(direct[0]), abs=1e-4)


def test_the_submission_outputs_the_foreign_score(checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    path, folder, _ = checkpoint
    out = run_cli("export", f"ckpt_path={path}", "format=submission", f"paths.output_dir={tmp_path}", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "submission" / "model.onnx"), providers=["CPUExecutionProvider"])
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in sorted(folder.glob("*.png"))])
    probs, ood = session.run(["probs", "ood_score"], {"images": images})
    expected = load_predictor(path).predict(loader_of(images, np.zeros(len(images), np.int64), 4))
    assert np.allclose(ood, expected["ood"].numpy(), rtol=1e-3, atol=1e-4)
    assert np.allclose(probs, expected["probs"].numpy(), atol=1e-4)
    card = (tmp_path / "submission" / "MODEL_CARD.md").read_text()
    assert "Not a medical device" in card and "mahalanobis+pixels" in card
    assert json.loads((tmp_path / "submission" / "classes.json").read_text())["ood_score"]


def test_a_tampered_conformal_calibration_is_refused_by_predict(checkpoint, tmp_path):
    path, folder, _ = checkpoint
    state = torch.load(path, weights_only=True)
    state["calibration"]["conformal"][NO_TTA.key]["targets"] = torch.full((400,), 9)
    torch.save(state, tmp_path / "t.ckpt")
    out = run_cli("predict", f"ckpt_path={tmp_path / 't.ckpt'}", f"input={folder}", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2 and "conformal calibration" in out.stderr, out.stderr[-2000:]
    with pytest.raises(Exception, match="conformal calibration"):
        load_classifier(tmp_path / "t.ckpt")


def test_predict_on_onnx_runtime_writes_the_same_csv_as_on_torch(checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    path, folder, _ = checkpoint
    path = Path(shutil.copy(path, tmp_path / "fresh.ckpt"))  # no graph cached beside it yet
    tables = {}
    for backend in ("torch", "onnxruntime"):
        out = run_cli(
            "predict",
            f"ckpt_path={path}",
            f"input={folder}",
            f"output={tmp_path / backend}.csv",
            f"backend={backend}",
            "tta=dihedral",
            f"hydra.run.dir={tmp_path}",
        )
        assert out.returncode == 0, out.stderr[-3000:]
        tables[backend] = list(csv.DictReader(open(tmp_path / f"{backend}.csv")))
        said = out.stdout + out.stderr
        assert ("for ONNX Runtime" in said) == (backend == "onnxruntime")  # it exported here
        chatter = [line for line in said.splitlines() if "][onnx_ir." in line or "][onnxscript." in line]
        assert not chatter, chatter[:3]  # the exporter's graph passes are not the user's business
    for a, b in zip(tables["torch"], tables["onnxruntime"], strict=True):
        assert (a["source"], a["pred"]) == (b["source"], b["pred"])
        numbers = [k for k in a if k.startswith("p_") or k == "ood_score"]
        assert max(abs(float(a[k]) - float(b[k])) for k in numbers) <= 1e-4
