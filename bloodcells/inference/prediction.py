"""Unlabelled images in, what ``predict`` writes out: one function that ``predict`` and the
served page share, so the page's CSV is ``predict``'s for the same files."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bloodcells.data.datamodule import array_loader
from bloodcells.inference.adapt import ADAPT_BATCH, TentSettings, adapted_predictor
from bloodcells.inference.conformal import ConformalSets, configured_sets
from bloodcells.inference.onnx_backend import resolve_backend
from bloodcells.inference.predictor import Predictor


@dataclass
class Prediction:
    """Calibrated probabilities (N x K), conformal sets (N x K bool, None without stored
    calibration) and the foreign-image score (N, > 1 foreign; None without a fitted score)."""

    probs: np.ndarray
    sets: np.ndarray | None
    ood: np.ndarray | None
    conformal: ConformalSets | None


def predict_images(
    predictor: Predictor,
    images: np.ndarray,
    conformal: dict,
    batch_size: int = 128,
    backend: str = "auto",
    device: torch.device | None = None,
    adapt: str = "none",
    tent: TentSettings | None = None,
) -> Prediction:
    """Score ``images`` (N x S x S x 3 uint8 at the predictor's input size) with the
    predictor's TTA, temperature and stored conformal calibration (``conformal``: the
    ``conformal`` config); ``adapt=bn|tent`` first adapts BatchNorm to these images."""
    device = device or predictor.members[0].device
    predictor.backend = resolve_backend(backend, device, len(images) * predictor.tta.n_views)
    predictor = adapted_predictor(predictor, adapt, array_loader(images, ADAPT_BATCH), tent)
    scored = predictor.predict(array_loader(images, batch_size))
    probs = scored["probs"]
    sets_fitted = configured_sets(predictor.calibration_set, conformal)
    return Prediction(
        probs.numpy(),
        None if sets_fitted is None else sets_fitted.sets(probs).numpy(),
        None if scored["ood"] is None else scored["ood"].numpy(),
        sets_fitted,
    )
