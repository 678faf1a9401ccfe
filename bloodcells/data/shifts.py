"""A shift suite made from a site's own cells, no download: how a model fares when the same
cells arrive as another laboratory would photograph them.

Each shift is a fixed, seeded transform of uint8 images (N x H x W x 3): stain shifts of
several strengths in HED space, zoom in and out, blur, JPEG, over-exposure (a white
background), and two combinations. The suite measures robustness; it is never trained on.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image

from bloodcells.data.stain import hed_to_rgb, rgb_to_hed


def stain(h: float, e: float, d: float = 1.0) -> Callable[[np.ndarray], np.ndarray]:
    """Scale the haematoxylin, eosin and third-stain concentrations."""
    factors = np.array([h, e, d])
    return lambda images: np.stack([hed_to_rgb(rgb_to_hed(a) * factors) for a in images])


def zoom(scale: float) -> Callable[[np.ndarray], np.ndarray]:
    """Magnify (> 1) or shrink (< 1) about the centre; a shrunk image is padded with its own
    border colour (the median of its edge pixels), not mirrored (mirroring adds cells)."""

    def apply(images: np.ndarray) -> np.ndarray:
        out = []
        for a in images:
            h, w = a.shape[:2]
            edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
            fill = tuple(int(v) for v in np.median(edge, axis=0))
            matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 0.0, scale)
            out.append(
                cv2.warpAffine(
                    a, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=fill
                )
            )
        return np.stack(out)

    return apply


def blur(sigma: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda images: np.stack([cv2.GaussianBlur(a, (0, 0), sigma) for a in images])


def jpeg(quality: int) -> Callable[[np.ndarray], np.ndarray]:
    def apply(images: np.ndarray) -> np.ndarray:
        out = []
        for a in images:
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="JPEG", quality=quality)
            out.append(np.asarray(Image.open(buf).convert("RGB")))
        return np.stack(out)

    return apply


def exposure(gain: float) -> Callable[[np.ndarray], np.ndarray]:
    """Over-exposure: intensities scaled up and clipped, so the background turns white."""
    return lambda images: np.clip(images.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def combine(*steps: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    def apply(images: np.ndarray) -> np.ndarray:
        for step in steps:
            images = step(images)
        return images

    return apply


SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "stain_mild": stain(1.15, 0.85),
    "stain_strong": stain(1.4, 0.6),
    "stain_pale": stain(0.7, 0.8),
    "stain_eosin_heavy": stain(0.9, 1.5),
    "zoom_in": zoom(1.4),
    "zoom_out": zoom(0.7),
    "blur": blur(1.2),
    "jpeg_q30": jpeg(30),
    "overexposed": exposure(1.3),
    "stain_strong+blur": combine(stain(1.4, 0.6), blur(1.2)),
    "zoom_out+stain_pale+jpeg": combine(zoom(0.7), stain(0.7, 0.8), jpeg(40)),
}
"""Name -> transform, in report order."""


def shifted(images: np.ndarray, name: str) -> np.ndarray:
    """``images`` under the named shift (``none``: unchanged)."""
    return images if name == "none" else SHIFTS[name](images)
