"""Conformal prediction sets: the guarantee on exchangeable data, and MAPIE as an
independent oracle on the same probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bloodcells.inference.conformal import (
    ConformalSets,
    class_scores,
    conformal_quantile,
    risk_coverage,
    set_metrics,
    share_at_accuracy,
    true_class_scores,
)


def noisy_probs(n: int, k: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A classifier that is right about 80% of the time, with imbalanced classes."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.multinomial(torch.tensor([0.05, 0.15, 0.1, 0.15, 0.1, 0.1, 0.25, 0.1]), n, True, generator=g)
    logits = torch.randn(n, k, generator=g) * 1.5
    logits[torch.arange(n), targets] += 2.5
    return logits.softmax(dim=1), targets


class FixedProbs:
    """A scikit-learn-like estimator whose "features" are row numbers into given probabilities."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs, self.classes_ = probs, np.arange(probs.shape[1])

    def fit(self, x, y):
        return self

    def predict_proba(self, x):
        return self.probs[np.asarray(x).ravel().astype(int)]

    def predict(self, x):
        return self.predict_proba(x).argmax(1)

    def __sklearn_is_fitted__(self) -> bool:
        return True


def test_quantile_is_the_split_conformal_order_statistic():
    scores = torch.arange(1, 20, dtype=torch.float64)  # n = 19
    assert conformal_quantile(scores, 0.1) == 18.0  # ceil(20 * 0.9) = 18th smallest
    assert conformal_quantile(scores, 0.05) == 19.0
    assert math.isinf(conformal_quantile(scores, 0.01))  # ceil(20 * 0.99) = 20 > n


def test_aps_score_is_the_mass_ranked_at_or_above_the_class():
    probs = torch.tensor([[0.1, 0.6, 0.3]])
    assert torch.allclose(class_scores(probs, "aps"), torch.tensor([[1.0, 0.6, 0.9]], dtype=torch.float64))
    raps = class_scores(probs, "raps", lam=0.5, k_reg=1)  # ranks 3, 1, 2 -> penalties 1.0, 0, 0.5
    assert torch.allclose(raps, torch.tensor([[2.0, 0.6, 1.4]], dtype=torch.float64))


@pytest.mark.parametrize("alpha", [0.05, 0.1])
@pytest.mark.parametrize("score", ["lac", "aps", "raps"])
@pytest.mark.parametrize("class_conditional", [False, True])
def test_sets_cover_at_least_one_minus_alpha_on_exchangeable_data(alpha, score, class_conditional):
    """Mean coverage over 30 re-splits of 4,000 images lies within 1 - alpha and a margin
    (1 / (n_cal + 1) above, from the finite-sample bound, plus sampling slack)."""
    probs, targets = noisy_probs(4000, seed=1)
    covered, per_class = [], []
    for r in range(30):
        perm = torch.randperm(4000, generator=torch.Generator().manual_seed(r))
        cal, test = perm[:2000], perm[2000:]
        sets = ConformalSets.fit(probs[cal], targets[cal], alpha, score, class_conditional).sets(probs[test])
        m = set_metrics(sets, targets[test], [str(c) for c in range(8)])
        covered.append(m["coverage"])
        per_class.append(list(m["coverage_per_class"].values()))
    assert 1 - alpha - 0.005 <= np.mean(covered) <= 1 - alpha + 0.02
    if class_conditional:  # every class gets its own guarantee, the rarest included
        assert np.mean(per_class, axis=0).min() >= 1 - alpha - 0.01


pytest.importorskip("mapie", reason="MAPIE (the test oracle) is in the dev extra")


@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_lac_sets_equal_mapie(alpha):
    from mapie.classification import SplitConformalClassifier

    probs, targets = noisy_probs(1500, seed=2)
    cal, test = np.arange(500), np.arange(500, 1500)
    mapie = SplitConformalClassifier(FixedProbs(probs.numpy()), 1 - alpha, "lac", prefit=True)
    mapie.conformalize(cal.reshape(-1, 1), targets[cal].numpy())
    _, theirs = mapie.predict_set(test.reshape(-1, 1))
    ours = ConformalSets.fit(probs[cal], targets[cal], alpha, "lac", class_conditional=False).sets(probs[test])
    assert np.array_equal(ours.numpy(), theirs[:, :, 0])


def test_aps_threshold_equals_mapie_on_its_randomised_scores():
    """MAPIE randomises APS calibration scores (score - u * p_true); fed the same u, ours give
    the same scores and the same threshold. (MAPIE's RAPS tunes lambda and k_reg on a held-out
    part of the calibration data, a different procedure: RAPS is checked by hand above.)"""
    from mapie.classification import SplitConformalClassifier

    probs, targets = noisy_probs(800, seed=3)
    rows = np.arange(800)
    mapie = SplitConformalClassifier(FixedProbs(probs.numpy()), 0.9, "aps", prefit=True, random_state=7)
    mapie.conformalize(rows.reshape(-1, 1), targets.numpy())
    mapie.predict_set(rows[:10].reshape(-1, 1))
    u = torch.from_numpy(np.random.RandomState(7).uniform(size=len(rows)))
    ours = true_class_scores(probs, targets, "aps", u=u)
    assert np.allclose(ours.numpy(), np.ravel(mapie.conformity_scores), atol=1e-9)
    theirs = np.ravel(mapie._mapie_classifier.conformity_score_function_.quantiles_)[0]
    assert conformal_quantile(ours, 0.1) == pytest.approx(float(theirs), abs=1e-6)  # MAPIE sums in float32


def test_class_conditional_sets_equal_mapie_fitted_on_each_class():
    """Class c is in our set exactly when MAPIE, conformalized on class c's images alone, puts it there."""
    from mapie.classification import SplitConformalClassifier

    probs, targets = noisy_probs(3000, seed=4)
    cal, test = np.arange(2000), np.arange(2000, 3000)
    ours = ConformalSets.fit(probs[cal], targets[cal], 0.1, "lac", class_conditional=True).sets(probs[test])
    for c in range(8):
        rows = cal[targets[cal].numpy() == c]
        mapie = SplitConformalClassifier(FixedProbs(probs.numpy()), 0.9, "lac", prefit=True)
        with pytest.warns(UserWarning, match="less labels"):
            mapie.conformalize(rows.reshape(-1, 1), targets[rows].numpy())
        _, theirs = mapie.predict_set(test.reshape(-1, 1))
        assert np.array_equal(ours[:, c].numpy(), theirs[:, c, 0])


def test_risk_coverage_accepts_the_most_confident_first():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.55, 0.45]])
    targets = torch.tensor([0, 0, 1, 1])  # the least confident (0.55) is the one mistake
    curve = risk_coverage(probs, targets, points=4)
    assert [r["accuracy"] for r in curve] == [1.0, 1.0, 1.0, 0.75]
    assert share_at_accuracy(probs, targets, 0.99) == 0.75


def test_a_class_with_too_few_calibration_images_falls_back_to_the_marginal_threshold():
    probs, targets = noisy_probs(400, seed=5)
    rare = (targets == 0).nonzero().squeeze(1)[:5]  # 5 basophils: ceil(6 * 0.95) = 6 > 5
    keep = torch.cat([rare, (targets != 0).nonzero().squeeze(1)])
    fitted = ConformalSets.fit(probs[keep], targets[keep], 0.05, "lac", class_conditional=True)
    marginal = ConformalSets.fit(probs[keep], targets[keep], 0.05, "lac", class_conditional=False)
    assert fitted.marginal_only == [0]
    assert fitted.thresholds[0] == marginal.thresholds[0]
    assert torch.isfinite(fitted.thresholds).all()
