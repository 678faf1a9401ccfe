"""One evaluation of one scored variant on one split: the typed result that train, evaluate
and ensemble hand to the run-dir outputs and report.html."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bloodcells.inference.metrics import compute_metrics

KINDS = ("plain", "tta", "ensemble", "ensemble+tta")
"""What a variant is: one model or several, with or without TTA views."""


@dataclass
class Evaluation:
    kind: str
    """One of ``KINDS``: never parsed from a display name."""
    probs: torch.Tensor
    """N x K calibrated probabilities."""
    targets: torch.Tensor
    index: torch.Tensor
    """Each row's position in the data (for sources and images)."""
    metrics: dict
    """Scalars: accuracy, balanced accuracy, macro F1, AUROC, ECE, NLL, ... plus what the
    caller adds (TTA key, temperature, members, TTA changes)."""
    per_class: list[dict]
    confusion_matrix: list[list[int]]
    uncalibrated_probs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Evaluation.kind={self.kind!r}: one of {KINDS}")

    @classmethod
    def score(
        cls,
        kind: str,
        probs: torch.Tensor,
        targets: torch.Tensor,
        index: torch.Tensor,
        class_names: list[str],
        uncalibrated_probs: torch.Tensor | None = None,
        **metrics: object,
    ) -> Evaluation:
        """Compute the metrics of ``probs`` against ``targets``; ``metrics`` are added to them."""
        computed = compute_metrics(probs, targets, class_names)
        return cls(
            kind,
            probs,
            targets,
            index,
            {**computed["metrics"], **metrics},
            computed["per_class"],
            computed["confusion_matrix"],
            uncalibrated_probs,
        )
