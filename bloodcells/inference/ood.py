"""Fit the foreign-image score after training: on the training split's features, with the
threshold set on validation and the method chosen on a foreign suite made from validation.

Three deep scores are fitted (``bloodcells.models.ood.METHODS``), then the best of them is
also tried combined with the image-statistics distance. Each candidate is scored on the
validation cells and on ``bloodcells.data.foreign``'s suite made from those same cells; the
one with the highest mean AUROC over the foreign kinds is kept, with its threshold at the
score that accepts 95% of validation cells. Nothing here sees the test split.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from bloodcells.data.datamodule import array_loader
from bloodcells.data.foreign import foreign_suite
from bloodcells.data.resize import resize_images
from bloodcells.inference.predictor import Predictor
from bloodcells.inference.tta import NO_TTA
from bloodcells.models.module import CellClassifier
from bloodcells.models.ood import METHODS, OODScorer, image_statistics

log = logging.getLogger(__name__)

ACCEPT = 0.95
"""Share of in-distribution (validation) cells the threshold accepts."""
SHRINKAGE = 0.1
"""Covariance shrinkage towards a scaled identity: 1,280 features from a few thousand cells
give a singular sample covariance."""
KNN_K, KNN_BANK = 10, 4096
MAX_FIT = 6000
"""Training cells used for fitting (stratified subsample): the statistics settle long before."""


@dataclass
class Seen:
    """What the scorers need of a set of images: image statistics (N x 10), pooled features
    (N x D), logits (N x K) and labels."""

    stats: torch.Tensor
    feats: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor

    def subset(self, rows: torch.Tensor) -> Seen:
        return Seen(self.stats[rows], self.feats[rows], self.logits[rows], self.labels[rows])


@torch.inference_mode()
def look(model: CellClassifier, loader: DataLoader) -> Seen:
    """Every image of ``loader`` at the model's input size, identity view."""
    model.eval()
    stats, feats, logits, labels = [], [], [], []
    for images, y, _ in loader:
        x = resize_images(images.to(model.device), model.hparams.image_size)
        f = model.features(x)
        stats.append(image_statistics(x).cpu())
        feats.append(f.float().cpu())
        logits.append(model.head(f).float().cpu())
        labels.append(y)
    return Seen(torch.cat(stats), torch.cat(feats), torch.cat(logits), torch.cat(labels))


class StatsScorer(OODScorer):
    """An ``OODScorer`` applied to precomputed image statistics instead of images (fitting
    needs each set of images to go through the network once)."""

    def image_distance(self, stats: torch.Tensor) -> torch.Tensor:
        return self.stats_distance(stats)

    def on(self, seen: Seen) -> torch.Tensor:
        return self(seen.stats, seen.feats, seen.logits)


def whitening(centred: torch.Tensor) -> torch.Tensor:
    """W with W W^T the inverse of the shrunk covariance of ``centred`` rows."""
    cov = centred.T @ centred / max(1, len(centred) - 1)
    scale = cov.diagonal().mean()
    cov = (1 - SHRINKAGE) * cov + SHRINKAGE * scale * torch.eye(len(cov), dtype=cov.dtype)
    return torch.linalg.cholesky(torch.linalg.inv(cov))


def mahalanobis_arrays(feats: torch.Tensor, labels: torch.Tensor, n_classes: int) -> dict[str, torch.Tensor]:
    f = feats.double()
    means = torch.stack([f[labels == c].mean(0) if (labels == c).any() else f.mean(0) for c in range(n_classes)])
    whiten = whitening(f - means[labels])
    return {"projection": whiten.float(), "centres": (means @ whiten).float()}


def pixel_arrays(stats: torch.Tensor) -> dict[str, torch.Tensor]:
    s = stats.double()
    centre = s.mean(0, keepdim=True)
    return {"pixel_centre": centre.float(), "pixel_projection": whitening(s - centre).float()}


def knn_arrays(feats: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    rows = torch.randperm(len(feats), generator=torch.Generator().manual_seed(seed))[:KNN_BANK]
    return {"bank": torch.nn.functional.normalize(feats[rows].float(), dim=1)}


def accept_point(scores: torch.Tensor) -> float:
    """The score below which ``ACCEPT`` of the given (validation) scores lie."""
    return max(float(torch.quantile(scores.double(), ACCEPT)), 1e-12)


def fitted_scorer(method: str, arrays: dict, val: Seen, pixels: bool) -> StatsScorer:
    """The scorer with its threshold (and, with ``pixels``, the scales of its two parts) at the
    validation score that accepts ``ACCEPT`` of the cells."""
    arrays = dict(arrays)
    if pixels:
        deep = StatsScorer(method, 1.0, arrays, KNN_K).deep(val.feats, val.logits)
        distance = StatsScorer(method, 1.0, arrays, KNN_K).image_distance(val.stats)
        arrays["scales"] = torch.tensor([[accept_point(deep), accept_point(distance)]])
    raw = StatsScorer(method, 1.0, arrays, KNN_K, pixels).on(val)
    return StatsScorer(method, accept_point(raw), arrays, KNN_K, pixels)


def auroc(inside: np.ndarray, foreign: np.ndarray) -> float:
    """P(a foreign image scores higher than a cell), ties counted half (Mann-Whitney U)."""
    scores = np.concatenate([inside, foreign])
    ranks = np.empty(len(scores))
    order = scores.argsort(kind="stable")
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2 + 1
    ranks[order] = np.repeat(avg, counts)
    u = ranks[len(inside) :].sum() - len(foreign) * (len(foreign) + 1) / 2
    return float(u / (len(inside) * len(foreign)))


def foreign_rates(scorer_out_inside: np.ndarray, by_kind: dict[str, np.ndarray]) -> list[dict]:
    """Per foreign kind: AUROC against the cells, and the share wrongly accepted (score <= 1)."""
    rows = []
    for kind, scores in by_kind.items():
        rows.append(
            {
                "kind": kind,
                "auroc": auroc(scorer_out_inside, scores),
                "false_accept": float(np.mean(scores <= 1)),
                "n": int(len(scores)),
            }
        )
    rows.append(
        {
            "kind": "cells (accepted)",
            "auroc": float("nan"),
            "false_accept": float(np.mean(scorer_out_inside <= 1)),
            "n": int(len(scorer_out_inside)),
        }
    )
    return rows


def stratified_rows(labels: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    """At most ``limit`` rows, each class keeping its share."""
    if len(labels) <= limit:
        return torch.arange(len(labels))
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in labels.unique():
        rows = (labels == c).nonzero().squeeze(1)
        n = max(1, round(limit * len(rows) / len(labels)))
        keep.append(rows[torch.randperm(len(rows), generator=g)[:n]])
    return torch.cat(keep).sort().values


@dataclass
class OODFit:
    best: OODScorer
    comparison: list[dict]
    """Per candidate: its mean validation AUROC over the foreign kinds, and each kind's."""
    candidates: dict[str, OODScorer]
    """Every candidate, fitted and thresholded (for benchmarks)."""


def fit_ood(
    model: CellClassifier,
    train: DataLoader,
    val: DataLoader,
    val_images: np.ndarray,
    batch_size: int,
    seed: int = 0,
) -> OODFit:
    """Fit every candidate, compare them on validation vs the suite made from ``val_images``
    (uint8 N x H x W x 3); the best is kept."""
    fit = look(model, train)
    fit = fit.subset(stratified_rows(fit.labels, MAX_FIT, seed))
    cells = look(model, val)
    suite = {kind: look(model, array_loader(x, batch_size)) for kind, x in foreign_suite(val_images, seed).items()}
    deep_arrays = {
        "mahalanobis": mahalanobis_arrays(fit.feats, fit.labels, len(model.class_names)),
        "knn": knn_arrays(fit.feats, seed),
        "msp": {},
    }
    candidates = [(method, False) for method in METHODS]
    comparison: list[dict] = []
    scorers: list[StatsScorer] = []

    def compare(method: str, pixels: bool) -> float:
        arrays = {**deep_arrays[method], **(pixel_arrays(fit.stats) if pixels else {})}
        scorer = fitted_scorer(method, arrays, cells, pixels)
        rates = foreign_rates(scorer.on(cells).numpy(), {k: scorer.on(seen).numpy() for k, seen in suite.items()})
        mean = float(np.mean([r["auroc"] for r in rates[:-1]]))
        name = method + ("+pixels" if pixels else "")
        comparison.append({"method": name, "mean_auroc": mean, **{r["kind"]: r["auroc"] for r in rates[:-1]}})
        scorers.append(scorer)
        return mean

    means = [compare(method, pixels) for method, pixels in candidates]
    compare(METHODS[int(np.argmax(means))], True)  # the best deep score, with the image statistics
    best = int(np.argmax([row["mean_auroc"] for row in comparison]))
    log.info(
        "foreign-image score: %s (mean validation AUROC %.4f)",
        comparison[best]["method"],
        comparison[best]["mean_auroc"],
    )
    candidates = {
        row["method"]: OODScorer(s.method, s.threshold, dict(s.named_buffers()), s.k, s.pixels)
        for row, s in zip(comparison, scorers)
    }
    return OODFit(candidates[comparison[best]["method"]], comparison, candidates)


FOREIGN_LIMIT = 512
"""Scored cells the evaluation's foreign suite is made from (evenly spaced)."""


def foreign_report(
    predictor: Predictor, images: np.ndarray, inside: torch.Tensor, batch_size: int, seed: int = 0
) -> list[dict]:
    """AUROC and false-accept rate per foreign kind, the suite made from (up to
    ``FOREIGN_LIMIT`` of) ``images``, against ``inside``: the scores of all scored cells."""
    rows = np.linspace(0, len(images) - 1, min(len(images), FOREIGN_LIMIT)).astype(int)
    identity = dataclasses.replace(predictor, tta=NO_TTA)  # the score uses the identity view
    by_kind = {
        kind: identity.predict(array_loader(x, batch_size))["ood"].numpy()
        for kind, x in foreign_suite(images[rows], seed).items()
    }
    return foreign_rates(inside.numpy(), by_kind)
