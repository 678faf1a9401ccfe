"""A predictor as one plain ``nn.Module``: uint8 N x H x W x 3 in, probabilities out.

Normalisation, the TTA views, the ensemble members with their weights and the calibration
temperature all live inside ``forward``, so an exported graph (ONNX, .pt2) needs nothing
from bloodcells: the course format (N x 96 x 96 x 3 uint8) goes straight in.
"""

from __future__ import annotations

import torch
from torch import nn

from bloodcells.errors import ConfigError
from bloodcells.predictor import Predictor
from bloodcells.tta import GEOMETRIC_VIEWS


class DeployedPredictor(nn.Module):
    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        sizes = {m.hparams.image_size for m in predictor.members}
        if len(sizes) > 1:
            raise ConfigError(f"export needs members of one input size, got {sorted(sizes)}")
        self.image_size = sizes.pop()
        self.members = nn.ModuleList([m.eval() for m in predictor.members])
        n = len(self.members)
        weights = predictor.weights if predictor.weights is not None else torch.full((n,), 1.0 / n)
        self.register_buffer("weights", torch.as_tensor(weights, dtype=torch.float32))
        self.views = GEOMETRIC_VIEWS[predictor.tta.views]
        self.brightness = predictor.tta.brightness
        self.merge = predictor.tta.merge
        self.temperature = float(predictor.temperature)
        self.class_names = list(predictor.class_names)

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        views = []
        for turns, mirror in self.views:
            v = x.flip(-1) if mirror else x
            views.append(torch.rot90(v, turns, dims=(-2, -1)) if turns else v)
        views += [(x * b).clamp(0, 255) for b in self.brightness]
        return torch.cat(views) if len(views) > 1 else views[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N x H x W x 3 (H = W = the members' input size) -> N x K probabilities."""
        x = images.permute(0, 3, 1, 2).float()
        n, v = x.shape[0], len(self.views) + len(self.brightness)
        views = self.expand(x)
        probs = torch.zeros((), device=x.device)
        for weight, member in zip(self.weights, self.members):
            logits = member(views).float().reshape(v, n, -1)
            merged = logits.mean(0).softmax(-1) if self.merge == "logit" else logits.softmax(-1).mean(0)
            probs = probs + weight * merged
        if self.temperature != 1.0:
            probs = (probs.clamp_min(1e-12).log() / self.temperature).softmax(-1)
        return probs
