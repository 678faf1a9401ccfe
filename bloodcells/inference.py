"""Single-device inference over a loader: every sample exactly once, in loader order.

Evaluation never runs under DDP (its sampler pads the last batch with repeats), so train,
evaluate and TTA all score through this loop on one device.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from bloodcells.metrics import compute_metrics
from bloodcells.models.module import CellClassifier


@torch.inference_mode()
def predict_probs(model: CellClassifier, loader: DataLoader) -> dict[str, torch.Tensor]:
    """Softmax probabilities, targets and image indices for every batch of ``loader``."""
    model.eval()
    probs, targets, index = [], [], []
    for images, y, idx in loader:
        probs.append(model(images.to(model.device)).float().softmax(dim=1).cpu())
        targets.append(y)
        index.append(idx)
    return {"probs": torch.cat(probs), "targets": torch.cat(targets), "index": torch.cat(index)}


def evaluate_loader(model: CellClassifier, loader: DataLoader) -> dict:
    """Predictions plus every metric of ``compute_metrics``."""
    results = predict_probs(model, loader)
    results.update(compute_metrics(results["probs"], results["targets"], model.class_names))
    return results
