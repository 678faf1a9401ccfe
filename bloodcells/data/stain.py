"""Stain jitter in a stain space: another laboratory's stain is another mix of dyes, not a hue
shift of the whole image.

Colour deconvolution (Ruifrok & Johnston 2001, the matrix scikit-image's ``rgb2hed`` uses)
turns RGB into optical density and splits it into three stain concentrations (haematoxylin,
eosin, DAB, the third a residual for Romanowsky-stained blood). ``HEDJitter`` scales and
shifts each concentration independently, then recomposes RGB: a heavier or paler nuclear
stain, a pinker or greyer cytoplasm, as different protocols and scanners produce.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np

RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
"""Rows: the optical-density colour of haematoxylin, eosin and DAB (Ruifrok & Johnston)."""
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
MIN_OD = 1e-6


def rgb_to_hed(image: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 RGB -> H x W x 3 stain concentrations (optical density units)."""
    rgb = np.maximum(image.astype(np.float64) / 255.0, MIN_OD)
    return (-np.log(rgb)) @ HED_FROM_RGB


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """The inverse of ``rgb_to_hed``, rounded to uint8."""
    rgb = np.exp(-(hed @ RGB_FROM_HED))
    return np.clip(np.floor(rgb * 255.0 + 0.5), 0, 255).astype(np.uint8)


class HEDJitter(A.ImageOnlyTransform):
    """Per stain: concentration x U(1 - sigma, 1 + sigma) + U(-bias, bias)."""

    def __init__(self, sigma: float = 0.05, bias: float = 0.05, p: float = 0.5) -> None:
        super().__init__(p=p)
        if not 0 <= sigma < 1 or bias < 0:
            raise ValueError(f"HEDJitter: sigma in [0, 1) and bias >= 0, got sigma={sigma}, bias={bias}")
        self.sigma, self.bias = sigma, bias

    def get_params(self) -> dict[str, Any]:
        rng = self.random_generator
        return {
            "scale": rng.uniform(1 - self.sigma, 1 + self.sigma, 3),
            "shift": rng.uniform(-self.bias, self.bias, 3),
        }

    def apply(self, img: np.ndarray, scale: np.ndarray, shift: np.ndarray, **params: Any) -> np.ndarray:
        return hed_to_rgb(rgb_to_hed(img) * scale + shift)
