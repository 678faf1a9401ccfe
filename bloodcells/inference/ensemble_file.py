"""Ensemble files, and ``load_predictor``: a checkpoint or an ensemble file, interchangeably.

An ensemble file is JSON: its members (checkpoint paths, relative to the file when they sit
below it), their weights, the TTA, and the temperature fitted for that TTA, plus a record of
what was fitted on which split. ``predict`` and ``evaluate`` accept it wherever they accept a
checkpoint. A checkpoint carries its own calibration (temperature per TTA key), written by
the train-time TTA callback.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from bloodcells.core.errors import CheckpointError
from bloodcells.inference.checkpoints import check_path, load_classifier
from bloodcells.inference.predictor import Predictor
from bloodcells.inference.stored import check_conformal, is_number, tta_from_dict
from bloodcells.inference.tta import TTA

log = logging.getLogger(__name__)

FORMAT = "bloodcells-ensemble"
ENSEMBLE_SUFFIXES = (".json",)


def write_ensemble_file(
    path: Path,
    members: list[str],
    weights: list[float],
    tta: TTA,
    temperature: float,
    provenance: dict,
    calibration_set: dict | None = None,
) -> Path:
    """Write the ensemble file (member paths relative to it where possible), with the
    validation probabilities conformal sets are fitted on, when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rel = [os.path.relpath(Path(m).resolve(), path.parent.resolve()) for m in members]
    body = {
        "format": FORMAT,
        "version": 1,
        "members": [{"checkpoint": r, "weight": float(w)} for r, w in zip(rel, weights)],
        "tta": tta.to_dict(),
        "temperature": float(temperature),
        "provenance": provenance,
    }
    if calibration_set is not None:
        body["conformal"] = {
            "probs": [[round(float(p), 8) for p in row] for row in calibration_set["probs"]],
            "targets": [int(t) for t in calibration_set["targets"]],
        }
    path.write_text(json.dumps(body, indent=2))
    return path


def read_ensemble_file(path: Path) -> dict:
    """The file's JSON, every value checked: member paths are text, weights finite and not
    negative (summing above 0), the temperature finite and positive, the TTA well formed."""
    try:
        body = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not a readable ensemble file ({err})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT or not body.get("members"):
        raise CheckpointError(f"{path}: not a bloodcells ensemble file (no format '{FORMAT}' with members)")
    members = body["members"]
    if not isinstance(members, list):
        raise CheckpointError(f"{path}: members={members!r}: expected a list of {{checkpoint, weight}}")
    for i, m in enumerate(members):
        if not isinstance(m, dict) or not isinstance(m.get("checkpoint"), str) or not m["checkpoint"]:
            raise CheckpointError(f"{path}: members[{i}]={m!r}: expected {{'checkpoint': PATH, 'weight': NUMBER}}")
        weight = m.get("weight", 1.0)
        if not is_number(weight) or weight < 0:
            raise CheckpointError(f"{path}: members[{i}].weight={weight!r}: expected a finite number >= 0")
    if sum(m.get("weight", 1.0) for m in members) <= 0:
        raise CheckpointError(f"{path}: the member weights sum to 0")
    temperature = body.get("temperature", 1.0)
    if not is_number(temperature) or temperature <= 0:
        raise CheckpointError(f"{path}: temperature={temperature!r}: expected a finite number > 0")
    return body


def load_predictor(path: object, tta: TTA | None = None, device: str | torch.device = "cpu") -> Predictor:
    """A ``Predictor`` from a checkpoint or an ensemble file.

    ``tta=None`` keeps the stored TTA (the ensemble file's, or the one a checkpoint was
    calibrated with; none otherwise). The stored temperature applies only to the TTA it was
    fitted for; any other TTA runs uncalibrated (T = 1), with a warning.
    """
    file = check_path(path)
    if file.suffix.lower() in ENSEMBLE_SUFFIXES:
        body = read_ensemble_file(file)
        stored = tta_from_dict(body.get("tta"), str(file))
        paths = [str(file.parent / m["checkpoint"]) for m in body["members"]]
        members = [load_classifier(p, device) for p in paths]
        weights = [float(m.get("weight", 1.0)) for m in body["members"]]
        weights = [w / sum(weights) for w in weights]
        temperatures = {stored.key: float(body.get("temperature", 1.0))}
        conformal = {stored.key: body["conformal"]} if "conformal" in body else {}
        check_conformal(conformal, str(file), len(members[0].class_names))
    else:
        model = load_classifier(file, device)
        members, weights = [model], None
        stored = tta_from_dict(model.calibration.get("tta"), str(file))  # checked by safe_load
        temperatures = dict(model.calibration.get("temperatures", {}))
        conformal = dict(model.calibration.get("conformal", {}))  # checked by load_classifier
    chosen = tta or stored
    temperature = temperatures.get(chosen.key)
    if temperature is None:
        if temperatures:
            log.warning(
                "%s: calibrated for TTA %s, not %s; predicting uncalibrated", file, list(temperatures), chosen.key
            )
        temperature = 1.0
    return Predictor(members, chosen, weights, temperature, conformal.get(chosen.key))
