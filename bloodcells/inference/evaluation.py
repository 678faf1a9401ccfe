"""One evaluation of one scored variant on one split: the typed result that train, evaluate
and ensemble hand to the run-dir outputs and report.html."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bloodcells.inference.conformal import ConformalSets, risk_coverage, set_metrics, share_at_accuracy
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
    sets: torch.Tensor | None = None
    """N x K conformal prediction sets (``add_uncertainty``), None when none were fitted."""
    ood: torch.Tensor | None = None
    """N foreign-image scores relative to the threshold (> 1: foreign), None without a score."""
    uncertainty: dict = field(default_factory=dict)
    """Set metrics (coverage, sizes, per class), the risk-coverage curve, foreign-image rates."""
    by_source: list[dict] = field(default_factory=list)
    """Metrics per source (site, dataset) when the data names one per image."""

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

    def add_uncertainty(
        self, conformal: ConformalSets | None, ood: torch.Tensor | None, class_names: list[str]
    ) -> None:
        """Prediction sets and their empirical coverage, the risk-coverage curve, and the share
        of these (in-distribution) images that the foreign-image score accepts."""
        self.uncertainty["risk_coverage"] = risk_coverage(self.probs, self.targets)
        self.metrics["accepted_share_at_99.5"] = share_at_accuracy(self.probs, self.targets, 0.995)
        if conformal is not None:
            self.sets = conformal.sets(self.probs)
            measured = set_metrics(self.sets, self.targets, class_names)
            self.uncertainty["conformal"] = {
                "score": conformal.score,
                "alpha": conformal.alpha,
                "class_conditional": conformal.class_conditional,
                "n_calibration": conformal.n_calibration,
                "marginal_only_classes": [class_names[c] for c in conformal.marginal_only],
                **measured,
            }
            self.metrics.update(
                {f"set_{k}": v for k, v in measured.items() if not isinstance(v, dict)}, conformal_alpha=conformal.alpha
            )
        if ood is not None:
            self.ood = ood
            self.metrics["in_distribution_share"] = float((ood <= 1).float().mean())

    def add_sources(self, sites: list[str] | None, class_names: list[str]) -> None:
        """Accuracy, balanced accuracy, macro F1 and ECE per source, plus set coverage and the
        share accepted as cells when those exist."""
        if sites is None:
            return
        sites = list(sites)
        for site in sorted(set(sites)):
            rows = torch.tensor([s == site for s in sites])
            m = compute_metrics(self.probs[rows], self.targets[rows], class_names)["metrics"]
            row = {"source": site, "n": int(rows.sum())}
            row.update({k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "ece")})
            if self.sets is not None:
                row["set_coverage"] = float(self.sets[rows].gather(1, self.targets[rows].view(-1, 1)).float().mean())
                row["mean_set_size"] = float(self.sets[rows].sum(1).float().mean())
            if self.ood is not None:
                row["in_distribution_share"] = float((self.ood[rows] <= 1).float().mean())
            self.by_source.append(row)
