"""One scorer for every prediction: checkpoints x TTA views x member weights x temperature.

``train``'s test, ``evaluate``, ``predict`` and ``ensemble`` all score through
``Predictor.scores`` (one device, every sample once, in loader order). A single checkpoint is
an ensemble of one member. Members may differ in backbone, input size and normalisation:
each model normalises its own input, and a batch is resized to a member's size on the fly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from bloodcells.core.errors import CheckpointError, ConfigError
from bloodcells.data.resize import resize_images
from bloodcells.inference.calibration import apply_temperature
from bloodcells.inference.onnx_backend import ort_view_logits
from bloodcells.inference.tta import NO_TTA, TTA
from bloodcells.models.module import CellClassifier

MAX_FORWARD = 256
"""Images per forward pass: on CPU, batches much larger than this run slower per image
(measured with lite0 at 96 px: 222 img/s at 128, 123 img/s at 1024)."""


@torch.inference_mode()
def _view_logits(model: CellClassifier, loader: DataLoader, tta: TTA) -> tuple[list, list, list, list]:
    model.eval()
    size = model.hparams.image_size
    step = max(1, MAX_FORWARD // tta.n_views)  # images whose views share one forward pass
    logits, ood, targets, index = [], [], [], []
    for images, y, idx in loader:
        x = resize_images(images.to(model.device), size)
        for part in x.split(step):
            out, score = model.view_scores(part, tta)
            logits.append(out.cpu())
            if score is not None:
                ood.append(score.float().cpu())
        targets.append(y)
        index.append(idx)
    return logits, ood, targets, index


def view_logits(model: CellClassifier, loader: DataLoader, tta: TTA) -> dict[str, torch.Tensor | None]:
    """Logits of every TTA view (V x N x K; view 0 is the identity), the foreign-image score
    of the identity view (N, or None without a fitted score), targets and indices.

    All views of an image go through the model in one batch (with the views of up to
    ``MAX_FORWARD / V`` other images), never one forward per view.
    """
    logits, ood, targets, index = _view_logits(model, loader, tta)
    # cat outside inference mode: the results can enter autograd (temperature fitting)
    return {
        "logits": torch.cat(logits, dim=1),
        "ood": torch.cat(ood) if ood else None,
        "targets": torch.cat(targets),
        "index": torch.cat(index),
    }


@dataclass
class Scores:
    """Logits of every member and view of one pass over a loader (M x V x N x K)."""

    logits: torch.Tensor
    targets: torch.Tensor
    index: torch.Tensor
    ood: list[torch.Tensor | None] | None = None
    """Each member's foreign-image score (N, relative to its threshold), None where it has none."""

    def subset(self, members: list[int]) -> Scores:
        ood = None if self.ood is None else [self.ood[m] for m in members]
        return Scores(self.logits[members], self.targets, self.index, ood)

    def ood_score(self, weights: torch.Tensor | None = None) -> torch.Tensor | None:
        """The members' scores (each 1 at its own threshold), weighted mean over the members
        that have one; None when none has. An image is foreign when this exceeds 1."""
        scored = [(i, s) for i, s in enumerate(self.ood or []) if s is not None]
        if not scored:
            return None
        w = torch.tensor([1.0 if weights is None else float(weights[i]) for i, _ in scored])
        return (w.view(-1, 1) * torch.stack([s for _, s in scored])).sum(0) / w.sum().clamp_min(1e-12)

    def member_probs(self, tta: TTA | None) -> torch.Tensor:
        """M x N x K probabilities: each member's TTA merge, or its identity view (``None``)."""
        if tta is None:
            return self.logits[:, 0].softmax(dim=-1)
        return torch.stack([tta.merge_logits(member) for member in self.logits])

    def probs(self, tta: TTA | None, weights: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
        """N x K probabilities: weighted mean over members (uniform by default), then temperature."""
        members = self.member_probs(tta)
        if weights is None:
            weights = torch.full((len(members),), 1.0 / len(members))
        return apply_temperature((weights.view(-1, 1, 1) * members).sum(dim=0), temperature)


@dataclass
class Predictor:
    """Members (loaded checkpoints) with their TTA, weights and calibration temperature."""

    members: list[CellClassifier]
    tta: TTA = NO_TTA
    weights: torch.Tensor | None = None
    temperature: float = 1.0
    calibration_set: dict | None = None
    """Calibrated validation probabilities and true classes for this TTA, from which
    conformal prediction sets are fitted; None when the checkpoint stores none for it."""
    backend: str = "torch"
    """``torch``, or ``onnxruntime`` (``inference.onnx_backend``: same scores, faster on CPU)."""

    def __post_init__(self) -> None:
        names = [m.class_names for m in self.members]
        if any(n != names[0] for n in names):
            raise CheckpointError(f"ensemble members disagree on the classes: {names}")
        if self.weights is not None:
            self.weights = torch.as_tensor(self.weights, dtype=torch.float32)
            if len(self.weights) != len(self.members) or (self.weights < 0).any() or self.weights.sum() <= 0:
                raise CheckpointError(
                    f"ensemble weights {self.weights.tolist()} do not fit {len(self.members)} members"
                )
            self.weights = self.weights / self.weights.sum()

    @property
    def class_names(self) -> list[str]:
        return self.members[0].class_names

    @property
    def image_size(self) -> int:
        """The size data is read at: the largest member's (smaller members resize down)."""
        return max(m.hparams.image_size for m in self.members)

    def scores(self, loader: DataLoader) -> Scores:
        """One pass per member over ``loader`` with the predictor's TTA."""
        if self.backend == "onnxruntime":
            step = max(1, MAX_FORWARD // self.tta.n_views)
            passes = [ort_view_logits(m, loader, self.tta, step) for m in self.members]
        else:
            passes = [view_logits(m, loader, self.tta) for m in self.members]
        for p in passes[1:]:
            if not torch.equal(p["index"], passes[0]["index"]):
                raise RuntimeError("the loader changed its order between members; it must not shuffle")
        return Scores(
            torch.stack([p["logits"] for p in passes]),
            passes[0]["targets"],
            passes[0]["index"],
            [p["ood"] for p in passes],
        )

    def predict(self, loader: DataLoader) -> dict[str, torch.Tensor]:
        """Calibrated probabilities of the configured predictor, plus the identity-view ones."""
        scores = self.scores(loader)
        return {
            "probs": scores.probs(self.tta, self.weights, self.temperature),
            "plain_probs": scores.probs(None, self.weights, self.temperature if self.tta == NO_TTA else 1.0),
            "ood": scores.ood_score(self.weights),
            "targets": scores.targets,
            "index": scores.index,
        }


def tta_changes(plain: torch.Tensor, tta: torch.Tensor, targets: torch.Tensor) -> dict[str, int]:
    """How many predictions TTA changed, and of those how many it fixed and broke."""
    before, after = plain.argmax(dim=1), tta.argmax(dim=1)
    changed = before != after
    return {
        "changed": int(changed.sum()),
        "fixed": int((changed & (after == targets)).sum()),
        "broken": int((changed & (before == targets)).sum()),
    }


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device={name!r} is not a device (auto, cpu, cuda, cuda:1...): {err}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(f"device={name!r}: this machine has {count} usable CUDA GPU(s); use device=cpu or auto")
    elif device.type not in ("cpu", "mps"):
        raise ConfigError(f"device={name!r}: not supported here; use auto, cpu or cuda[:N]")
    return device
