"""Albumentations pipelines: the configured train augmentations and the eval pipeline.

Images stay uint8 through the pipeline; the model normalises them (its mean/std travel in
the checkpoint), so the data side never needs to know the backbone.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np
import torch

from bloodcells.data.resize import resize_array


class ResizeToInput(A.ImageOnlyTransform):
    """The model's input size through ``bloodcells.data.resize`` (crop + Lanczos), the same
    function that predict, the predictor and the exported graph use (not cv2's bilinear)."""

    def __init__(self, size: int) -> None:
        super().__init__(p=1.0)
        self.size = size

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        return resize_array(img, self.size)


def build_pipeline(transforms: Sequence[A.BasicTransform], image_size: int | None = None) -> A.Compose:
    """Compose ``transforms`` then, if needed, resize to the model's input size."""
    steps = list(transforms)
    if image_size is not None:
        steps.append(ResizeToInput(image_size))
    return A.Compose(steps)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HWC uint8 array -> CHW uint8 tensor (contiguous, no copy of the values' type)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
