"""A predictor as one plain ``nn.Module``: uint8 N x H x W x 3 in, probabilities out (and
the foreign-image score, when the members carry one: 1 at the threshold, > 1 foreign).

Normalisation, the TTA views, the ensemble members with their weights and the calibration
temperature all live inside ``forward``, so an exported graph (ONNX, .pt2) needs nothing
from bloodcells: the course format (N x 96 x 96 x 3 uint8) goes straight in, whatever size
the model was trained at (the graph resizes it as training did).
"""

from __future__ import annotations

import torch
from torch import nn

from bloodcells.core.errors import ConfigError
from bloodcells.data.resize import resize_images
from bloodcells.inference.calibration import apply_temperature
from bloodcells.inference.predictor import Predictor


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
        scored = torch.tensor([m.ood is not None for m in predictor.members], dtype=torch.float32)
        self.has_ood = bool(scored.any())
        self.register_buffer("ood_weights", self.weights * scored / (self.weights * scored).sum().clamp_min(1e-12))
        self.tta = predictor.tta
        self.temperature = float(predictor.temperature)
        self.class_names = list(predictor.class_names)

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """uint8 N x H x W x 3 of any size -> N x K probabilities [, N foreign-image scores, as
        ``Predictor`` combines them]. Images are brought to the members' input size by
        ``resize_images``, as ``predict`` and training bring them."""
        x = resize_images(images.permute(0, 3, 1, 2), self.image_size)
        probs = torch.zeros((), device=x.device)
        ood = torch.zeros((), device=x.device)
        for weight, ood_weight, member in zip(self.weights, self.ood_weights, self.members):
            logits, score = member.view_scores(x, self.tta)
            probs = probs + weight * self.tta.merge_logits(logits)
            if score is not None:
                ood = ood + ood_weight * score
        probs = apply_temperature(probs, self.temperature)
        return (probs, ood) if self.has_ood else probs
