"""Class-imbalance losses: focal loss (cross-entropy at gamma=0) and class weights."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bloodcells.core.errors import ConfigError


class FocalLoss(nn.Module):
    """Focal loss of Lin et al. with optional per-class alpha and label smoothing.

    ``loss_i = -alpha_{y_i} * sum_c q_ic (1 - p_ic)^gamma log p_ic`` with ``q`` the
    (smoothed) one-hot target. At gamma=0 this is ``F.cross_entropy`` with the same weights
    (mean reduced over the weights, as torch does), and is computed by it.
    """

    def __init__(
        self, gamma: float = 0.0, label_smoothing: float = 0.0, class_weights: str | Sequence[float] | None = None
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"loss.gamma: focal loss gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.class_weights = class_weights
        """How the module derives the per-class weights from the training counts (see
        ``class_weights``); the weights themselves are passed to ``forward``."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        logits = logits.float()
        if self.gamma == 0:
            return F.cross_entropy(logits, target, weight=weight, label_smoothing=self.label_smoothing)
        n_classes = logits.shape[1]
        log_p = F.log_softmax(logits, dim=1)
        q = F.one_hot(target, n_classes).float()
        if self.label_smoothing:
            q = q * (1 - self.label_smoothing) + self.label_smoothing / n_classes
        per_sample = -(q * (1 - log_p.exp()).pow(self.gamma) * log_p).sum(dim=1)
        if weight is None:
            return per_sample.mean()
        w = weight[target]
        return (w * per_sample).sum() / w.sum()


def build_loss(name: str, **settings) -> FocalLoss:
    """The loss called ``name`` (see ``bloodcells.models.hparams.LOSSES``) with its settings."""
    return {"focal": FocalLoss}[name](**settings)


def class_weights(
    counts: Sequence[int], method: str | Sequence[float] | None, beta: float = 0.999
) -> torch.Tensor | None:
    """Per-class loss weights from training-set class counts.

    - ``balanced``: n / (k * n_c), as scikit-learn and Keras users compute them;
    - ``effective``: Cui et al.'s effective number of samples, (1 - beta) / (1 - beta^n_c),
      scaled to average 1;
    - a list: used as given (one weight per class);
    - ``None``/``none``: no weighting.
    """
    counts_arr = np.asarray(counts, dtype=np.float64)
    if method is None or method == "none":
        return None
    if isinstance(method, str):
        if np.any(counts_arr == 0):
            missing = np.flatnonzero(counts_arr == 0).tolist()
            raise ConfigError(f"loss.class_weights: '{method}': classes {missing} have no training images")
        if method == "balanced":
            w = counts_arr.sum() / (len(counts_arr) * counts_arr)
        elif method == "effective":
            w = (1 - beta) / (1 - np.power(beta, counts_arr))
            w = w * len(w) / w.sum()
        else:
            raise ConfigError(
                f"loss.class_weights={method!r} is not allowed; choose balanced, effective, none or a list of weights"
            )
    else:
        w = np.asarray(list(method), dtype=np.float64)
        if w.shape != counts_arr.shape:
            raise ConfigError(f"loss.class_weights: list has {len(w)} entries for {len(counts_arr)} classes")
    return torch.tensor(w, dtype=torch.float32)
