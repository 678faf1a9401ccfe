"""Calibration: reliability bins, expected calibration error and temperature scaling.

Temperature scaling divides log-probabilities by one scalar T and renormalises; it is
fitted on validation predictions *after* TTA/ensembling (what is actually deployed) by
minimising NLL over log T, so T stays positive. A positive T never changes the argmax.
"""

from __future__ import annotations

import torch

N_BINS = 15
T_RANGE = (0.05, 20.0)
"""Fitted temperatures are clipped to this range: an uninformative model drives T to
infinity (uniform probabilities), where float32 ties would change the argmax."""


def reliability_bins(
    probs: torch.Tensor, targets: torch.Tensor, n_bins: int = N_BINS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per confidence bin [i/n, (i+1)/n): mean confidence, accuracy and sample count.

    A confidence of exactly 1 falls into the last bin.
    """
    confidence, preds = probs.float().max(dim=1)
    correct = (preds == targets).float()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=confidence.dtype)
    bins = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, n_bins - 1)
    count = torch.bincount(bins, minlength=n_bins).float()
    conf_sum = torch.zeros(n_bins).scatter_add_(0, bins, confidence)
    acc_sum = torch.zeros(n_bins).scatter_add_(0, bins, correct)
    safe = count.clamp_min(1)
    return conf_sum / safe, acc_sum / safe, count


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = N_BINS) -> float:
    """Sum over bins of (bin share) x |accuracy - mean confidence| (L1 ECE)."""
    conf, acc, count = reliability_bins(probs, targets, n_bins)
    return float(((acc - conf).abs() * count).sum() / count.sum().clamp_min(1))


def nll(probs: torch.Tensor, targets: torch.Tensor) -> float:
    return float(torch.nn.functional.nll_loss(probs.double().clamp_min(1e-12).log(), targets.long()))


def apply_temperature(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(log p / T): T > 1 softens, T < 1 sharpens; T = 1 returns ``probs``."""
    if temperature == 1.0:
        return probs
    return (probs.double().clamp_min(1e-12).log() / temperature).softmax(dim=1).to(probs.dtype)


def fit_temperature(probs: torch.Tensor, targets: torch.Tensor, max_iter: int = 200) -> float:
    """The T minimising validation NLL of ``apply_temperature(probs, T)``, optimised over log T.

    NLL is unimodal in log T, so clipping to ``T_RANGE`` keeps the best T in range. Falls
    back to T = 1 if the optimiser does not improve on it, so fitting never raises
    validation NLL.
    """
    log_p = probs.double().clamp_min(1e-12).log()
    targets = targets.long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(log_p / log_t.exp(), targets)
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(loss)
    temperature = min(max(float(log_t.detach().exp()), T_RANGE[0]), T_RANGE[1])
    if not torch.isfinite(torch.tensor(temperature)) or nll(apply_temperature(probs, temperature), targets) > nll(
        probs, targets
    ):
        return 1.0
    return temperature
