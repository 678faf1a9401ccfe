"""Fit and compare what is deployed: TTA on/off, one model vs an ensemble, each calibrated.

Everything fitted here (member weights, temperatures) is fitted on the validation split;
the test split is only scored. Ensemble weights on a couple of thousand validation images
overfit easily, so fitted weights are kept only if they beat uniform weights on a held-out
part of validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bloodcells.inference.calibration import apply_temperature, expected_calibration_error, fit_temperature, nll
from bloodcells.inference.metrics import compute_metrics
from bloodcells.inference.predictor import Scores, tta_changes
from bloodcells.inference.tta import TTA

FITTED_ON = "validation split (weights: greedy selection on one half, kept only if better on the other half)"


def stratified_halves(targets: torch.Tensor, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint index sets, each class split evenly between them."""
    rng = np.random.default_rng(seed)
    fit, held = [], []
    y = targets.numpy()
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fit.append(idx[::2])
        held.append(idx[1::2])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


def greedy_weights(member_probs: torch.Tensor, targets: torch.Tensor, rounds: int) -> torch.Tensor:
    """Caruana et al.'s ensemble selection with replacement: each round adds the member that
    lowers the NLL of the running mean most; weights are the selection counts."""
    counts = torch.zeros(len(member_probs))
    total = torch.zeros_like(member_probs[0])
    for r in range(rounds):
        losses = [nll((total + p) / (r + 1), targets) for p in member_probs]
        best = int(np.argmin(losses))
        counts[best] += 1
        total += member_probs[best]
    return counts / counts.sum()


def fit_weights(member_probs: torch.Tensor, targets: torch.Tensor, rounds: int = 20, seed: int = 0) -> dict:
    """Greedy weights fitted on half of validation; kept only if the other half's NLL is lower
    than with uniform weights. Returns the chosen weights and the evidence."""
    m = len(member_probs)
    uniform = torch.full((m,), 1.0 / m)
    fit_idx, held_idx = stratified_halves(targets, seed)
    fitted = greedy_weights(member_probs[:, fit_idx], targets[fit_idx], rounds)

    def held_nll(w: torch.Tensor) -> float:
        return nll((w.view(-1, 1, 1) * member_probs[:, held_idx]).sum(0), targets[held_idx])

    fitted_nll, uniform_nll = held_nll(fitted), held_nll(uniform)
    keep = fitted_nll < uniform_nll
    return {
        "weights": fitted if keep else uniform,
        "fitted_weights": fitted.tolist(),
        "kept_fitted": bool(keep),
        "heldout_nll_fitted": fitted_nll,
        "heldout_nll_uniform": uniform_nll,
    }


@dataclass
class VariantResult:
    kind: str
    """``plain``, ``tta``, ``ensemble`` or ``ensemble+tta`` (``evaluation.KINDS``)."""
    name: str
    """For tables: the kind and the TTA, e.g. ``tta (dihedral/prob)``."""
    row: dict
    test_probs: torch.Tensor
    """Calibrated test probabilities."""
    temperature: float
    uncalibrated_test_probs: torch.Tensor
    val_probs: torch.Tensor
    """Calibrated validation probabilities: what conformal prediction sets are fitted on."""


def evaluate_variant(
    kind: str,
    val: Scores,
    test: Scores,
    tta: TTA | None,
    class_names: list[str],
    weights: torch.Tensor | None = None,
    name: str | None = None,
) -> VariantResult:
    """Score one variant on test, with its temperature fitted on validation; ``name`` labels
    its table row (default: the kind and the TTA)."""
    val_raw = val.probs(tta, weights)
    temperature = fit_temperature(val_raw, val.targets)
    raw = test.probs(tta, weights)
    calibrated = apply_temperature(raw, temperature)
    metrics = compute_metrics(calibrated, test.targets, class_names)["metrics"]
    name = name or (kind if tta is None else f"{kind} ({tta.key})")
    row = {
        "variant": name,
        "members": int(len(test.logits)),
        "views": 1 if tta is None else tta.n_views,
        "accuracy": metrics["accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "macro_f1": metrics["macro_f1"],
        "nll": nll(raw, test.targets),
        "ece": expected_calibration_error(raw, test.targets),
        "temperature": temperature,
        "nll_calibrated": metrics["nll"],
        "ece_calibrated": metrics["ece"],
    }
    if tta is not None:
        row.update(tta_changes(test.probs(None, weights), raw, test.targets))
    return VariantResult(kind, name, row, calibrated, temperature, raw, apply_temperature(val_raw, temperature))


def compare_variants(
    val: Scores, test: Scores, tta: TTA, class_names: list[str], weights: torch.Tensor | None = None
) -> list[VariantResult]:
    """plain / TTA for the first member, and ensemble / ensemble+TTA when there are several."""
    first_val, first_test = val.subset([0]), test.subset([0])
    results = [evaluate_variant("plain", first_val, first_test, None, class_names)]
    if tta.n_views > 1:
        results.append(evaluate_variant("tta", first_val, first_test, tta, class_names))
    if len(test.logits) > 1:
        results.append(evaluate_variant("ensemble", val, test, None, class_names, weights))
        if tta.n_views > 1:
            results.append(evaluate_variant("ensemble+tta", val, test, tta, class_names, weights))
    return results
