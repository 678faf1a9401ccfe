"""Split conformal prediction sets: a set of classes that holds the true class with
probability at least 1 - alpha, whatever the model, if test images are exchangeable with
the calibration images (the validation split; never test).

Three conformity scores (higher = less like the class), for every class k of an image:
LAC (Sadinle et al. 2019) ``1 - p_k``; APS (Romano et al. 2020) the probability mass of the
classes at least as likely as k, k included; RAPS (Angelopoulos et al. 2021) APS plus
``lam * max(0, rank_k - k_reg)``, which keeps sets small. The threshold is the
``ceil((n + 1)(1 - alpha))``-th smallest calibration score (infinite when n is too small: the
set then holds every class, which keeps the guarantee). Class-conditional (Mondrian) fits
one threshold per true class, so each class, rare basophils included, gets its own
guarantee. Scores are deterministic: the same image always gets the same set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from bloodcells.core.errors import ConfigError, check_choice

SCORES = ("lac", "aps", "raps")


def class_scores(probs: torch.Tensor, score: str, lam: float = 0.01, k_reg: int = 1) -> torch.Tensor:
    """N x K conformity scores of every class for every image."""
    check_choice("conformal.score", score, SCORES)
    probs = probs.double()
    if score == "lac":
        return 1 - probs
    order = probs.argsort(dim=1, descending=True, stable=True)
    sorted_probs = probs.gather(1, order)
    mass = sorted_probs.cumsum(dim=1)  # mass of the classes ranked at or above each rank
    if score == "raps":
        rank = torch.arange(1, probs.shape[1] + 1, dtype=probs.dtype)
        mass = mass + lam * (rank - k_reg).clamp_min(0)
    return torch.empty_like(mass).scatter_(1, order, mass)


def true_class_scores(
    probs: torch.Tensor, targets: torch.Tensor, score: str, u: torch.Tensor | None = None, **options: float
) -> torch.Tensor:
    """Each calibration image's score for its true class. ``u`` (uniform in [0, 1), one per
    image) gives APS/RAPS's randomised form, ``score - u * p_true`` (for comparison with
    libraries that randomise); bloodcells itself uses the deterministic form."""
    scores = class_scores(probs, score, **options).gather(1, targets.long().view(-1, 1)).squeeze(1)
    if u is not None and score != "lac":
        scores = scores - u.double() * probs.double().gather(1, targets.long().view(-1, 1)).squeeze(1)
    return scores


def conformal_quantile(scores: torch.Tensor, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest score; infinite if that exceeds n."""
    n = len(scores)
    rank = math.ceil((n + 1) * (1 - alpha))
    if n == 0 or rank > n:
        return math.inf
    return float(scores.double().sort().values[rank - 1])


@dataclass
class ConformalSets:
    """Thresholds fitted on calibration probabilities; ``sets`` turns probabilities into sets."""

    score: str
    alpha: float
    thresholds: torch.Tensor
    """One threshold (marginal) or one per class (class-conditional); inf: always in the set."""
    class_conditional: bool
    n_calibration: int
    lam: float = 0.01
    k_reg: int = 1
    marginal_only: list[int] = field(default_factory=list)
    """Classes with too few calibration images for their own threshold: the marginal one
    applies, so they have the marginal guarantee only."""

    @classmethod
    def fit(
        cls,
        probs: torch.Tensor,
        targets: torch.Tensor,
        alpha: float,
        score: str = "lac",
        class_conditional: bool = True,
        lam: float = 0.01,
        k_reg: int = 1,
    ) -> ConformalSets:
        if not 0 < alpha < 1:
            raise ConfigError(f"conformal.alpha={alpha!r}: expected a number between 0 and 1 (e.g. 0.05)")
        scores = true_class_scores(probs, targets, score, lam=lam, k_reg=k_reg)
        marginal = conformal_quantile(scores, alpha)
        fallback: list[int] = []
        if class_conditional:
            per_class = [conformal_quantile(scores[targets == c], alpha) for c in range(probs.shape[1])]
            fallback = [c for c, t in enumerate(per_class) if math.isinf(t)]
            thresholds = torch.tensor([marginal if math.isinf(t) else t for t in per_class])
        else:
            thresholds = torch.tensor([marginal])
        return cls(score, float(alpha), thresholds.double(), class_conditional, len(targets), lam, k_reg, fallback)

    def sets(self, probs: torch.Tensor) -> torch.Tensor:
        """N x K booleans: class k is in image i's set."""
        return class_scores(probs, self.score, self.lam, self.k_reg) <= self.thresholds.view(1, -1)


def set_metrics(sets: torch.Tensor, targets: torch.Tensor, class_names: list[str]) -> dict:
    """Empirical coverage (overall and per true class), mean set size, share of singletons."""
    covered = sets.gather(1, targets.long().view(-1, 1)).squeeze(1).float()
    size = sets.sum(dim=1).float()
    per_class = {}
    for c, name in enumerate(class_names):
        mask = targets == c
        if mask.any():
            per_class[name] = float(covered[mask].mean())
    return {
        "coverage": float(covered.mean()),
        "mean_set_size": float(size.mean()),
        "singleton_share": float((size == 1).float().mean()),
        "empty_share": float((size == 0).float().mean()),
        "coverage_per_class": per_class,
    }


def risk_coverage(probs: torch.Tensor, targets: torch.Tensor, points: int = 50) -> list[dict]:
    """Accuracy of the images accepted when only the most confident share is accepted, for
    shares from 1/points to 1 (selective classification by the top probability)."""
    confidence, pred = probs.max(dim=1)
    correct = (pred == targets).double()[confidence.argsort(descending=True, stable=True)]
    n = len(correct)
    rows = []
    for i in range(1, points + 1):
        m = max(1, round(n * i / points))
        rows.append({"accepted": m / n, "accuracy": float(correct[:m].mean())})
    return rows


def share_at_accuracy(probs: torch.Tensor, targets: torch.Tensor, accuracy: float) -> float:
    """The largest share of images (most confident first) whose accuracy reaches ``accuracy``."""
    confidence, pred = probs.max(dim=1)
    correct = (pred == targets).double()[confidence.argsort(descending=True, stable=True)]
    running = correct.cumsum(0) / torch.arange(1, len(correct) + 1, dtype=torch.float64)
    ok = (running >= accuracy).nonzero()
    return float(ok.max() + 1) / len(correct) if len(ok) else 0.0


def configured_sets(calibration: dict | None, settings: dict) -> ConformalSets | None:
    """The sets ``settings`` (the ``conformal`` config) ask for, fitted on stored calibration
    (validation probabilities and true classes); None when nothing is stored."""
    if not calibration:
        return None
    probs, targets = (torch.as_tensor(calibration[k]) for k in ("probs", "targets"))
    return ConformalSets.fit(
        probs,
        targets,
        float(settings["alpha"]),
        str(settings["score"]),
        bool(settings["class_conditional"]),
        float(settings.get("lam", 0.01)),
        int(settings.get("k_reg", 1)),
    )
