"""Test-time augmentation: the views of a batch go through the model as one batch.

Blood cells have no orientation, so the natural view set is the dihedral group of the
square (4 rotations x optional mirror = 8 distinct views); ``flips`` is its 4-element
subgroup {identity, horizontal flip, vertical flip, 180° rotation}. Optional brightness
views scale the identity view. View 0 is always the identity, so one TTA pass also yields
the plain prediction (which is how TTA's fixed/broken predictions are counted).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from bloodcells.core.errors import ConfigError, check_choice

GEOMETRIC_VIEWS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flips": ((0, False), (0, True), (2, True), (2, False)),
    "dihedral": tuple((k, flip) for flip in (False, True) for k in range(4)),
}
"""(quarter turns, mirror first) for each view; (2, True) is the vertical flip."""

MERGES = ("prob", "logit")


def apply_view(images: torch.Tensor, quarter_turns: int, mirror: bool) -> torch.Tensor:
    """Mirror (left-right) then rotate by ``quarter_turns`` x 90° (N x C x H x W)."""
    x = images.flip(-1) if mirror else images
    return torch.rot90(x, quarter_turns, dims=(-2, -1)) if quarter_turns else x


@dataclass(frozen=True)
class TTA:
    """A view set and how its predictions merge.

    ``merge='prob'`` averages probabilities (the common default); ``'logit'`` averages
    logits, i.e. a renormalised geometric mean of the probabilities.
    """

    views: str = "none"
    brightness: tuple[float, ...] = field(default_factory=tuple)
    merge: str = "prob"

    def __post_init__(self) -> None:
        check_choice("tta.views", self.views, GEOMETRIC_VIEWS)
        check_choice("tta.merge", self.merge, MERGES)
        object.__setattr__(self, "brightness", tuple(float(b) for b in self.brightness or ()))
        if any(b <= 0 for b in self.brightness):
            raise ConfigError(f"tta.brightness={list(self.brightness)}: factors must be positive, e.g. [0.9, 1.1]")

    @property
    def n_views(self) -> int:
        return len(GEOMETRIC_VIEWS[self.views]) + len(self.brightness)

    @property
    def key(self) -> str:
        """A short name, e.g. ``dihedral+b0.9,1.1/prob``; calibration is stored per key."""
        bright = "+b" + ",".join(f"{b:g}" for b in self.brightness) if self.brightness else ""
        return f"{self.views}{bright}/{self.merge}"

    def to_dict(self) -> dict:
        return {**asdict(self), "brightness": list(self.brightness)}

    def expand(self, images: torch.Tensor) -> torch.Tensor:
        """All views of a batch, view-major: (V x N) x C x H x W (square images)."""
        views = [apply_view(images, k, m) for k, m in GEOMETRIC_VIEWS[self.views]]
        views += [(images.float() * b).clamp_(0, 255) for b in self.brightness]
        if len(views) == 1:
            return views[0]
        return torch.cat([v.float() for v in views]) if self.brightness else torch.cat(views)

    def merge_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """V x N x K view logits -> N x K probabilities."""
        if self.merge == "logit":
            return logits.mean(dim=0).softmax(dim=-1)
        return logits.softmax(dim=-1).mean(dim=0)


NO_TTA = TTA()
