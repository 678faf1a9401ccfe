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
from bloodcells.data.datamodule import array_loader
from bloodcells.data.readers import read_unlabelled
from bloodcells.inference.adapt import ADAPT_BATCH, adapted_predictor
from bloodcells.inference.conformal import configured_sets
from bloodcells.inference.ensemble_file import load_predictor
from bloodcells.inference.onnx_backend import resolve_backend
from bloodcells.inference.predictor import resolve_device
from bloodcells.reporting.outputs import write_predictions
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
    predictor.backend = resolve_backend(cfg.get("backend", "torch"), device, len(images) * predictor.tta.n_views)
    predictor = adapted_predictor(predictor, cfg.get("adapt", "none"), array_loader(images, ADAPT_BATCH))
    scored = predictor.predict(array_loader(images, cfg.batch_size))
    probs = scored["probs"]
    conformal = configured_sets(predictor.calibration_set, cfg.conformal)
    if conformal is None:
        log.warning(
            "%s stores no conformal calibration for TTA %s: no prediction_set column", cfg.ckpt_path, predictor.tta.key
        )
    sets = None if conformal is None else conformal.sets(probs).numpy()
    ood = None if scored["ood"] is None else scored["ood"].numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_predictions(out, sources, probs.numpy(), predictor.class_names, sets=sets, ood=ood)
    counts = np.bincount(probs.numpy().argmax(1), minlength=len(predictor.class_names))
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
