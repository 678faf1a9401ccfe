"""Find likely label errors: out-of-fold probabilities, then confident learning.

Out-of-fold: every image is scored by a classifier that never saw its label (K-fold
cross-fitting of a multinomial logistic regression on frozen features: cheap enough to run on
every image, and a label error cannot be memorised by a model that never trained on it).

Confident learning (Northcutt et al. 2021, the ``confident_learning`` filter of cleanlab):
each class j gets a threshold t_j, the mean probability of j over the images labelled j; an
image is confidently counted as class j when p_j >= t_j (the likeliest such j when several
are). An image counted as another class than its label is an issue. Issues are ranked by
self-confidence, the probability of the given label (lowest first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class FoldHead:
    """One fold's linear classifier on raw features: ``features @ weight.T + bias``."""

    weight: torch.Tensor
    bias: torch.Tensor


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, n_classes: int, l2: float) -> FoldHead:
    """Multinomial logistic regression with an L2 penalty, fitted by L-BFGS on standardised
    features; returned as a head on the raw features."""
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    x = (features - mean) / std
    weight = torch.zeros(n_classes, x.shape[1], dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(x @ weight.T + bias, labels) + l2 * weight.pow(2).sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(loss)
    w = (weight / std).detach()
    return FoldHead(w, (bias - (mean / std) @ weight.T).detach())


def fold_of(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A stratified fold number (0..folds-1) for every image."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        fold[rows] = np.arange(len(rows)) % folds
    return fold


def cross_fit(
    features: torch.Tensor, labels: np.ndarray, n_classes: int, folds: int = 5, seed: int = 0, l2: float = 1e-4
) -> tuple[np.ndarray, np.ndarray, list[FoldHead]]:
    """Out-of-fold probabilities (N x K), each image's fold, and the fold heads."""
    if folds < 2:
        raise ValueError(f"audit.folds={folds}: cross-fitting needs at least 2 folds")
    fold = fold_of(labels, folds, seed)
    x, y = features.double(), torch.as_tensor(labels, dtype=torch.long)
    probs = np.zeros((len(labels), n_classes))
    heads = []
    for k in range(folds):
        held = torch.as_tensor(fold == k)
        head = fit_logistic(x[~held], y[~held], n_classes, l2)
        probs[held.numpy()] = (x[held] @ head.weight.T + head.bias).softmax(dim=1).numpy()
        heads.append(FoldHead(head.weight.float(), head.bias.float()))
    return probs, fold, heads


def confident_learning(labels: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: the confidently counted class (-1: none), whether it is an issue, the
    suggested label (the likeliest class) and the self-confidence."""
    n_classes = probs.shape[1]
    thresholds = np.array([probs[labels == j, j].mean() if (labels == j).any() else 1.0 for j in range(n_classes)])
    above = probs >= thresholds - 1e-12
    counted = np.where(above.any(axis=1), np.where(above, probs, -np.inf).argmax(axis=1), -1)
    return {
        "thresholds": thresholds,
        "counted_as": counted,
        "is_issue": (counted >= 0) & (counted != labels),
        "suggested": probs.argmax(axis=1),
        "self_confidence": probs[np.arange(len(labels)), labels],
    }


def ranked(found: dict[str, np.ndarray]) -> np.ndarray:
    """Row order for the report: issues first, each group by self-confidence, lowest first."""
    return np.lexsort((found["self_confidence"], ~found["is_issue"]))
