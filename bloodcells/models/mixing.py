"""MixUp and CutMix on the training batch (Zhang et al. 2018; Yun et al. 2019).

Each image is mixed with its mirror in the batch (image i with image N-1-i, as timm pairs
them; the loader has already shuffled), by a blend (MixUp) or a pasted box (CutMix), with a
weight ``lam`` drawn from Beta(alpha, alpha). The loss is then ``lam * loss(y) +
(1 - lam) * loss(y mirrored)``: for unweighted cross-entropy exactly the loss on the mixed soft
labels, and it keeps class weights, focal gamma and label smoothing as they are. The box is
timm's (``cutmix_bbox_and_lam``, lam corrected to the clipped area). Draws use NumPy's
global RNG, which checkpoints carry (``callbacks.rng_state``), so a resumed run mixes the
same batches the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from timm.data.mixup import cutmix_bbox_and_lam


@dataclass(frozen=True)
class MixedBatch:
    images: torch.Tensor
    """Float images, 0-255, the batch's shape."""
    partner_targets: torch.Tensor
    """The label each image was mixed with (the batch's targets mirrored)."""
    lam: float
    """The weight of each image's own label (for CutMix: the share of its pixels kept)."""


class BatchMixer:
    """Mixes a batch with probability ``prob``: CutMix with probability ``switch_prob`` when
    both alphas are positive, else whichever is on. Both alphas 0 (the default): off. The
    values are checked with the rest of the model's hyperparameters (``hparams.MIX``)."""

    def __init__(
        self, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0, switch_prob: float = 0.5
    ) -> None:
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob = float(prob), float(switch_prob)

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> MixedBatch | None:
        """The mixed batch, or None when this batch is left as it is (no draw is made when off)."""
        if not self.enabled or np.random.rand() >= self.prob:
            return None
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or np.random.rand() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(np.random.beta(alpha, alpha))
        x = images.float()
        partner = x.flip(0)
        if use_cutmix:
            (y0, y1, x0, x1), lam = cutmix_bbox_and_lam(x.shape, lam)
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
        else:
            x = x * lam + partner * (1 - lam)
        return MixedBatch(x, targets.flip(0), float(lam))
