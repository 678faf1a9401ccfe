"""The metrics a training run logs at every validation epoch (synchronised across DDP ranks);
the test-time set is ``bloodcells.inference.metrics``."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score


def validation_metrics(num_classes: int) -> MetricCollection:
    """Scalar metrics logged every validation epoch (synchronised across DDP ranks)."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "balanced_acc": MulticlassAccuracy(num_classes, average="macro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        }
    )
