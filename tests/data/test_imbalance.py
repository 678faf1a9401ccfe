"""Focal loss, class weights and the weighted sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bloodcells.data.sampling import EpochSampler
from bloodcells.models.losses import FocalLoss, class_weights


def test_focal_equals_cross_entropy_at_gamma_zero():
    torch.manual_seed(0)
    logits, target = torch.randn(16, 8), torch.randint(0, 8, (16,))
    weight = torch.rand(8) + 0.5
    assert FocalLoss(0.0)(logits, target) == pytest.approx(F.cross_entropy(logits, target).item())
    assert FocalLoss(0.0)(logits, target, weight) == pytest.approx(
        F.cross_entropy(logits, target, weight=weight).item()
    )
    # the general formula at gamma -> 0 agrees too (guards the gamma > 0 branch)
    assert FocalLoss(1e-9)(logits, target, weight) == pytest.approx(
        F.cross_entropy(logits, target, weight=weight).item(), rel=1e-5
    )


def test_focal_matches_hand_computed_value():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    target = torch.tensor([0, 2])
    p = torch.softmax(logits, 1)
    p0, p1 = p[0, 0].item(), p[1, 2].item()
    expected = (-((1 - p0) ** 2) * np.log(p0) - (1 - p1) ** 2 * np.log(p1)) / 2
    assert FocalLoss(2.0)(logits, target).item() == pytest.approx(expected, rel=1e-6)
    alpha = torch.tensor([0.25, 1.0, 3.0])
    weighted = (0.25 * -((1 - p0) ** 2) * np.log(p0) + 3.0 * -((1 - p1) ** 2) * np.log(p1)) / 3.25
    assert FocalLoss(2.0)(logits, target, alpha).item() == pytest.approx(weighted, rel=1e-6)


def test_class_weights():
    counts = [100, 300, 600]
    balanced = class_weights(counts, "balanced")
    assert balanced.tolist() == pytest.approx([1000 / 300, 1000 / 900, 1000 / 1800])
    effective = class_weights(counts, "effective", beta=0.99)
    assert effective.mean().item() == pytest.approx(1.0) and effective[0] > effective[1] > effective[2]
    assert class_weights(counts, [1, 2, 3]).tolist() == [1, 2, 3]
    assert class_weights(counts, None) is None
    with pytest.raises(ValueError, match="classes \\[1\\] have no training images"):
        class_weights([5, 0, 3], "balanced")


def positions(sampler: EpochSampler) -> np.ndarray:
    return np.array([i for i, _ in sampler])


def test_weighted_sampler_draws_classes_equally():
    labels = np.array([0] * 50 + [1] * 300 + [2] * 650)
    sampler = EpochSampler(labels, seed=0, weighted=True, n_classes=3)
    draws = np.concatenate([labels[positions(sampler)] for _ in range(20)])
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert freq == pytest.approx([1 / 3] * 3, abs=0.01)


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    labels = np.arange(100) % 4
    a, b = EpochSampler(labels, seed=1), EpochSampler(labels, seed=1)
    first = list(a)
    assert sorted(i for i, _ in first) == list(range(100))  # a permutation
    second = list(a)
    assert second != first  # the next epoch differs
    b.set_epoch(1)
    assert list(b) == second  # what resume relies on
