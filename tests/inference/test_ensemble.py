"""Ensembles: one member equals itself, mixed sizes/normalisations, weights, the CLI, and
predict/evaluate with an ensemble file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bloodcells.core.hydra import PROJECT_ROOT
from bloodcells.data.resize import resize_images
from bloodcells.inference.checkpoints import load_classifier
from bloodcells.inference.ensemble_file import load_predictor
from bloodcells.inference.ensembling import evaluate_variant, fit_weights
from bloodcells.inference.predictor import Predictor
from bloodcells.inference.tta import TTA
from bloodcells.runs.ensemble import ensemble
from bloodcells.runs.evaluate import evaluate
from bloodcells.runs.predict import predict
from tests.helpers import compose_config, loader_of, save_checkpoint, tiny_classifier

SAMPLE = PROJECT_ROOT / "data" / "sample"


def test_an_ensemble_of_one_member_equals_that_member(make_images):
    torch.manual_seed(1)
    images, labels = make_images(11, 32), np.arange(11) % 8
    model = tiny_classifier(32)
    loader = loader_of(images, labels, 4)
    tta = TTA("flips")
    alone = Predictor([model], tta).scores(loader)
    as_ensemble = Predictor([model], tta, weights=[3.0]).predict(loader)["probs"]
    torch.testing.assert_close(as_ensemble, alone.member_probs(tta)[0])
    a = evaluate_variant("tta", alone, alone, tta, model.class_names).row
    b = evaluate_variant("ensemble+tta", alone, alone, tta, model.class_names, torch.ones(1)).row
    assert {k: v for k, v in a.items() if k != "variant"} == {k: v for k, v in b.items() if k != "variant"}


def test_members_of_different_sizes_and_normalisations_ensemble_correctly(make_images):
    torch.manual_seed(2)
    images, labels = make_images(9, 96), np.arange(9) % 8
    small, large = tiny_classifier(64), tiny_classifier(96)
    small.mean.fill_(0.5 * 255)  # a different normalisation travels with the member
    small.std.fill_(0.25 * 255)
    predictor = Predictor([small, large], TTA("none"))
    assert predictor.image_size == 96
    probs = predictor.predict(loader_of(images, labels, 4))["probs"]
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        p_small = small(resize_images(x, 64)).softmax(-1)
        p_large = large(x).softmax(-1)
    torch.testing.assert_close(probs, (p_small + p_large) / 2, atol=1e-5, rtol=1e-5)
    assert (p_small - p_large).abs().max() > 1e-3  # the two members really differ


def test_fitted_weights_are_kept_only_when_they_beat_uniform_on_held_out_validation():
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 8, (400,), generator=g)
    good = torch.nn.functional.one_hot(targets, 8).float() * 0.9 + 0.1 / 8  # mostly right
    noise = torch.rand(400, 8, generator=g).softmax(-1)
    report = fit_weights(torch.stack([good, noise]), targets)
    assert report["kept_fitted"] and report["weights"][0] > report["weights"][1]
    twins = fit_weights(torch.stack([good, good]), targets)  # nothing to gain from fitting
    assert not twins["kept_fitted"] and twins["weights"].tolist() == [0.5, 0.5]


@pytest.fixture
def two_checkpoints(tmp_path: Path) -> list[Path]:
    torch.manual_seed(3)
    return [save_checkpoint(tiny_classifier(size), tmp_path / f"m{size}.ckpt") for size in (64, 96)]


def rows_by_source(path: Path) -> dict[str, np.ndarray]:
    with open(path) as f:
        return {r["source"]: np.array([float(r[k]) for k in r if k.startswith("p_")]) for r in csv.DictReader(f)}


def test_predict_with_an_ensemble_file_writes_the_ensemble_commands_probabilities(two_checkpoints, tmp_path):
    out = ensemble(
        compose_config(
            "ensemble",
            [
                f"members=[{two_checkpoints[0]},{two_checkpoints[1]}]",
                "tta=flips",
                "fit_weights=true",
                "data.num_workers=0",
            ],
            tmp_path / "ens",
        )
    )
    file = Path(out["ensemble_file"])
    body = json.loads(file.read_text())
    assert len(body["members"]) == 2 and body["tta"]["views"] == "flips"
    assert "validation" in body["provenance"]["fitted_on"]
    assert [r["variant"].split(" ")[0] for r in out["rows"]] == ["member", "member", "ensemble"]
    ensemble_rows = rows_by_source(tmp_path / "ens" / "predictions.csv")
    images = tmp_path / "images"
    for source in list(ensemble_rows)[:24]:
        (images / source).parent.mkdir(parents=True, exist_ok=True)
        (images / source).write_bytes((SAMPLE / source).read_bytes())
    predicted = rows_by_source(
        predict(compose_config("predict", [f"ckpt_path={file}", f"input={images}"], tmp_path / "p"))
    )
    assert len(predicted) == 24
    for source, p in predicted.items():
        np.testing.assert_allclose(p, ensemble_rows[source], atol=2e-6)
    # evaluate with the same file reproduces the ensemble's test metrics
    evaluated = evaluate(compose_config("evaluate", [f"ckpt_path={file}", "data.num_workers=0"], tmp_path / "e"))
    assert evaluated["accuracy"] == pytest.approx(out["accuracy"]) and evaluated["nll"] == pytest.approx(out["nll"])


def test_a_checkpoints_stored_temperature_applies_only_to_its_tta(two_checkpoints):
    from bloodcells.inference.checkpoints import write_calibration

    ckpt = two_checkpoints[1]
    write_calibration(
        ckpt, {"tta": TTA("dihedral").to_dict(), "temperatures": {"dihedral/prob": 1.7, "none/prob": 1.2}}
    )
    assert load_classifier(ckpt).calibration["temperatures"]["dihedral/prob"] == 1.7
    stored = load_predictor(ckpt)
    assert stored.tta == TTA("dihedral") and stored.temperature == 1.7
    assert load_predictor(ckpt, TTA("none")).temperature == 1.2
    assert load_predictor(ckpt, TTA("flips")).temperature == 1.0  # never calibrated for flips
