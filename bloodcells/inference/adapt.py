"""Test-time adaptation to a new site: BatchNorm statistics re-estimated on its images (AdaBN).

A network's BatchNorm layers normalise with the mean and variance of the training site's
activations; another stain or camera shifts them, and that shift is a large part of the
cross-site collapse reported for white-cell classifiers. Re-estimating the statistics on the
unlabelled images about to be scored (every BN layer, cumulative average, no gradient, no
label) is the cheap remedy. ``adapt=tent`` goes one step further (Wang et al. 2021, TENT):
with the batch's own statistics, the BatchNorm scales and shifts are trained to make the
predictions on the target images confident (mean softmax entropy, no label), then the
statistics are re-estimated as above. The adapted model is a copy: the checkpoint on disk
never changes, and its eval-mode forward (exported graph included) needs nothing else.
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

ADAPT = ("none", "bn", "tent")
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


@dataclasses.dataclass(frozen=True)
class TentSettings:
    """``adapt=tent``: passes over the target images, Adam learning rate of the BatchNorm
    affine parameters (the paper's 1e-3 for Adam), and the images per entropy step."""

    steps: int = 1
    lr: float = 1e-3
    batch: int = 64

    @classmethod
    def from_config(cls, settings: dict | None) -> TentSettings:
        """The ``tent`` block of a command's config (missing keys keep their defaults)."""
        settings = dict(settings or {})
        unknown = set(settings) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"tent: unknown key(s) {sorted(unknown)}; known: steps, lr, batch")
        return cls(**settings)

    def check(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"tent.steps={self.steps!r} must be a positive integer")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 2:
            raise ConfigError(f"tent.batch={self.batch!r} must be an integer >= 2 (entropy with batch statistics)")
        if not isinstance(self.lr, (int, float)) or not 0 < self.lr < 1:
            raise ConfigError(f"tent.lr={self.lr!r} must be a number in (0, 1)")


def tent(model: CellClassifier, loader: DataLoader, settings: TentSettings) -> CellClassifier:
    """A copy of ``model`` whose BatchNorm affine parameters minimise the entropy of its
    predictions on ``loader``'s images (batch statistics while training), with statistics
    then re-estimated on the same images (``adapt_batchnorm``)."""
    settings.check()
    adapted = copy.deepcopy(model).eval()
    layers = [m for m in adapted.modules() if isinstance(m, batchnorm_base())]
    if not layers:
        raise ConfigError(f"adapt=tent: backbone {model.hparams.backbone!r} has no BatchNorm layer to adapt")
    adapted.requires_grad_(False)
    params = []
    for bn in layers:
        bn.train()
        for p in (bn.weight, bn.bias):
            if p is not None:
                p.requires_grad_(True)
                params.append(p)
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    size = model.hparams.image_size
    with torch.enable_grad(), torch.inference_mode(False):
        for _ in range(settings.steps):
            for images, *_ in loader:
                for part in images.split(settings.batch):
                    if len(part) < 2:
                        continue
                    logits = adapted(resize_images(part.to(adapted.device), size))
                    entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()
                    optimizer.zero_grad(set_to_none=True)
                    entropy.backward()
                    optimizer.step()
    adapted.requires_grad_(False)
    return adapt_batchnorm(adapted.eval(), loader)


def adapted_predictor(
    predictor: Predictor, adapt: str, loader: DataLoader, tent_settings: TentSettings | None = None
) -> Predictor:
    """``predictor`` with every member adapted to ``loader``'s images (``adapt=bn`` or
    ``tent``), or as is."""
    if adapt not in ADAPT:
        raise ConfigError(f"adapt={adapt!r} is not allowed; choose one of {', '.join(ADAPT)}")
    if adapt == "none":
        return predictor
    if adapt == "tent":
        settings = tent_settings or TentSettings()
        return dataclasses.replace(predictor, members=[tent(m, loader, settings) for m in predictor.members])
    return dataclasses.replace(predictor, members=[adapt_batchnorm(m, loader) for m in predictor.members])
