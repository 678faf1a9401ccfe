"""Test-time adaptation to a new site: BatchNorm statistics re-estimated on its images (AdaBN).

A network's BatchNorm layers normalise with the mean and variance of the training site's
activations; another stain or camera shifts them, and that shift is a large part of the
cross-site collapse reported for white-cell classifiers. Re-estimating the statistics on the
unlabelled images about to be scored (every BN layer, cumulative average, no gradient, no
label) is the cheap remedy. The adapted model is a copy: the checkpoint on disk never changes.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch.utils.data import DataLoader

from bloodcells.core.compat import batchnorm_base
from bloodcells.core.errors import ConfigError
from bloodcells.data.resize import resize_images
from bloodcells.inference.predictor import Predictor
from bloodcells.models.module import CellClassifier

ADAPT = ("none", "bn")
ADAPT_BATCH = 128
"""Images per batch while re-estimating: BatchNorm averages per-batch statistics, so every
path (predict, evaluate's default loader, export) adapts with the same batch size."""


@torch.no_grad()
def adapt_batchnorm(model: CellClassifier, loader: DataLoader) -> CellClassifier:
    """A copy of ``model`` whose BatchNorm running statistics are those of ``loader``'s images."""
    adapted = copy.deepcopy(model).eval()
    layers = [m for m in adapted.modules() if isinstance(m, batchnorm_base())]
    if not layers:
        raise ConfigError(f"adapt=bn: backbone {model.hparams.backbone!r} has no BatchNorm layer to adapt")
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every image counts equally
        bn.train()
    seen = 0
    for images, *_ in loader:
        if len(images) < 2:  # a lone image has no batch variance (and BatchNorm1d refuses it)
            continue
        adapted(resize_images(images.to(adapted.device), model.hparams.image_size))
        seen += len(images)
    if seen < 2:
        raise ConfigError(f"adapt=bn needs at least 2 images to estimate statistics, got {seen}")
    for bn in layers:
        bn.momentum = 0.1
    adapted.checkpoint_path = None  # not the file's weights: an ONNX graph of it is not cached beside the file
    return adapted.eval()


def adapted_predictor(predictor: Predictor, adapt: str, loader: DataLoader) -> Predictor:
    """``predictor`` with every member adapted to ``loader``'s images (``adapt=bn``), or as is."""
    if adapt not in ADAPT:
        raise ConfigError(f"adapt={adapt!r} is not allowed; choose one of {', '.join(ADAPT)}")
    if adapt == "none":
        return predictor
    return dataclasses.replace(predictor, members=[adapt_batchnorm(m, loader) for m in predictor.members])
