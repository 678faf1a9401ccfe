"""Predict classes for new images: ``python -m bloodcells.predict ckpt_path=... input=...``.

``ckpt_path`` is a checkpoint or an ensemble file; its stored TTA and temperature apply
unless ``tta=...`` says otherwise; ``adapt=bn`` re-estimates the BatchNorm statistics on the
input images first (a new site's stain or camera; the checkpoint is not changed). ``input``
is an npz (``images``, or MedMNIST's ``test_images``), a folder (searched recursively) or one
image file. The CSV has the source
(file or npz index), the predicted class name and one probability column per class.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from bloodcells.core.errors import ConfigError, check_positive
from bloodcells.data.readers import read_unlabelled
from bloodcells.inference.adapt import TentSettings
from bloodcells.inference.ensemble_file import load_predictor
from bloodcells.inference.prediction import predict_images
from bloodcells.inference.predictor import resolve_device
from bloodcells.reporting.outputs import prediction_rows, write_rows
from bloodcells.runs.evaluate import configured_tta

log = logging.getLogger(__name__)


def predict(cfg: DictConfig) -> Path:
    check_positive("batch_size", cfg.batch_size)
    out = Path(cfg.output)
    if out.is_dir():
        raise ConfigError(f"output={out} is a folder; give a file name, e.g. output={out / 'predictions.csv'}")
    device = resolve_device(cfg.get("device", "auto"))
    predictor = load_predictor(cfg.ckpt_path, configured_tta(cfg), device)
    images, sources = read_unlabelled(cfg.input, image_size=predictor.image_size)
    backend, adapt = cfg.get("backend", "torch"), cfg.get("adapt", "none")
    tent = TentSettings.from_config(cfg.get("tent"))
    result = predict_images(predictor, images, cfg.conformal, cfg.batch_size, backend, device, adapt, tent)
    probs, sets, ood, conformal = result.probs, result.sets, result.ood, result.conformal
    if conformal is None:
        log.warning(
            "%s stores no conformal calibration for TTA %s: no prediction_set column", cfg.ckpt_path, predictor.tta.key
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_rows(out, prediction_rows(sources, probs, predictor.class_names, sets=sets, ood=ood))
    counts = np.bincount(probs.argmax(1), minlength=len(predictor.class_names))
    print(f"{len(images)} images -> {out}  (TTA {predictor.tta.key}, T={predictor.temperature:.3f})")
    print("predicted: " + "  ".join(f"{c} {n}" for c, n in zip(predictor.class_names, counts)))
    if sets is not None:
        print(
            f"prediction sets (alpha={conformal.alpha}, {conformal.score}): mean size {sets.sum(1).mean():.2f}, "
            f"{(sets.sum(1) == 1).mean():.1%} single-class"
        )
    if ood is not None:
        print(f"foreign (ood_score > 1, not a cell like the training cells): {int((ood > 1).sum())} of {len(ood)}")
    return out
