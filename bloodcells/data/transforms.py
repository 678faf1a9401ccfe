"""Albumentations pipelines: the configured train augmentations and the eval pipeline.

Images stay uint8 through the pipeline; the model normalises them (its mean/std travel in
the checkpoint), so the data side never needs to know the backbone.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np
import torch


def build_pipeline(transforms: Sequence[A.BasicTransform], image_size: int | None = None) -> A.Compose:
    """Compose ``transforms`` then, if needed, resize to the model's input size."""
    steps = list(transforms)
    if image_size is not None:
        steps.append(A.Resize(image_size, image_size, p=1.0))
    return A.Compose(steps)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HWC uint8 array -> CHW uint8 tensor (contiguous, no copy of the values' type)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
