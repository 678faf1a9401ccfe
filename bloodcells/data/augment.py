"""RandAugment, AugMix and GridMask as albumentations transforms on uint8 HWC arrays.

albumentations 2.0.8 (the last MIT release) has none of them. Randomness comes from the
transform's own ``py_random``/``random_generator``, so ``A.Compose(seed=...)`` and
DataLoader worker seeding make them reproducible like every built-in transform.
Geometric ops reflect at the border: a cell image has no meaningful black corner.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import albumentations as A
import cv2
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MAX_LEVEL = 10.0


def _affine(img: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.warpAffine(img, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def _centered(h: int, w: int, inner: np.ndarray) -> np.ndarray:
    """An affine 2x3 matrix applying ``inner`` (2x2) about the image centre."""
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    return np.hstack([inner, (c - inner @ c)[:, None]]).astype(np.float32)


def rotate(img: np.ndarray, level: float) -> np.ndarray:
    h, w = img.shape[:2]
    return _affine(img, cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 30.0 * level / MAX_LEVEL, 1.0))


def shear_x(img: np.ndarray, level: float) -> np.ndarray:
    h, w = img.shape[:2]
    return _affine(img, _centered(h, w, np.array([[1.0, 0.3 * level / MAX_LEVEL], [0.0, 1.0]])))


def shear_y(img: np.ndarray, level: float) -> np.ndarray:
    h, w = img.shape[:2]
    return _affine(img, _centered(h, w, np.array([[1.0, 0.0], [0.3 * level / MAX_LEVEL, 1.0]])))


def translate_x(img: np.ndarray, level: float) -> np.ndarray:
    dx = 0.3 * img.shape[1] * level / MAX_LEVEL
    return _affine(img, np.float32([[1, 0, dx], [0, 1, 0]]))


def translate_y(img: np.ndarray, level: float) -> np.ndarray:
    dy = 0.3 * img.shape[0] * level / MAX_LEVEL
    return _affine(img, np.float32([[1, 0, 0], [0, 1, dy]]))


def _enhance(kind: type) -> Callable[[np.ndarray, float], np.ndarray]:
    def op(img: np.ndarray, level: float) -> np.ndarray:
        if level == 0:
            return img
        return np.asarray(kind(Image.fromarray(img)).enhance(1.0 + 0.9 * level / MAX_LEVEL))

    return op


def solarize(img: np.ndarray, level: float) -> np.ndarray:
    threshold = 256 - int(round(256 * abs(level) / MAX_LEVEL))
    return np.where(img >= threshold, 255 - img, img).astype(np.uint8)


def posterize(img: np.ndarray, level: float) -> np.ndarray:
    bits = 8 - int(round(4 * abs(level) / MAX_LEVEL))
    shift = 8 - bits
    return ((img >> shift) << shift).astype(np.uint8)


def autocontrast(img: np.ndarray, level: float) -> np.ndarray:
    return np.asarray(ImageOps.autocontrast(Image.fromarray(img)))


def equalize(img: np.ndarray, level: float) -> np.ndarray:
    return np.asarray(ImageOps.equalize(Image.fromarray(img)))


def identity(img: np.ndarray, level: float) -> np.ndarray:
    return img


OPS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "identity": identity,
    "autocontrast": autocontrast,
    "equalize": equalize,
    "rotate": rotate,
    "solarize": solarize,
    "color": _enhance(ImageEnhance.Color),
    "posterize": posterize,
    "contrast": _enhance(ImageEnhance.Contrast),
    "brightness": _enhance(ImageEnhance.Brightness),
    "sharpness": _enhance(ImageEnhance.Sharpness),
    "shear_x": shear_x,
    "shear_y": shear_y,
    "translate_x": translate_x,
    "translate_y": translate_y,
}
SIGNED = {"rotate", "shear_x", "shear_y", "translate_x", "translate_y", "color", "contrast", "brightness", "sharpness"}
"""Ops whose level takes a random sign (the enhancers darken/blur at negative levels)."""


def check_ops(ops: Sequence[str]) -> list[str]:
    unknown = [o for o in ops if o not in OPS]
    if unknown or not ops:
        raise ValueError(f"unknown augmentation ops {unknown} (known: {sorted(OPS)})")
    return list(ops)


def apply_op(img: np.ndarray, name: str, level: float, rng: random.Random) -> np.ndarray:
    level = min(max(level, 0.0), MAX_LEVEL)
    if name in SIGNED and rng.random() < 0.5:
        level = -level
    return OPS[name](img, level)


class RandAugment(A.ImageOnlyTransform):
    """RandAugment (Cubuk et al. 2020): ``num_ops`` ops drawn uniformly, each at ``magnitude``
    (0-10), optionally jittered by Gaussian ``magnitude_std``. With only magnitude-driven ops
    (no autocontrast/equalize), magnitude 0 is the identity."""

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 9.0,
        magnitude_std: float = 0.0,
        ops: Sequence[str] = tuple(OPS),
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.num_ops, self.magnitude, self.magnitude_std = num_ops, magnitude, magnitude_std
        self.ops = check_ops(ops)

    def get_params(self) -> dict:
        chosen = [self.py_random.choice(self.ops) for _ in range(self.num_ops)]
        levels = [
            self.magnitude + (self.py_random.gauss(0, self.magnitude_std) if self.magnitude_std else 0.0)
            for _ in chosen
        ]
        return {"chosen": chosen, "levels": levels, "seed": self.py_random.getrandbits(32)}

    def apply(self, img: np.ndarray, chosen: list[str], levels: list[float], seed: int, **params) -> np.ndarray:
        rng = random.Random(seed)
        for name, level in zip(chosen, levels):
            img = apply_op(img, name, level, rng)
        return img

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("num_ops", "magnitude", "magnitude_std", "ops")


class AugMix(A.ImageOnlyTransform):
    """AugMix (Hendrycks et al. 2020): ``width`` chains of 1..``depth`` ops at ``severity``
    (0-10), mixed with Dirichlet(``alpha``) weights, then blended with the original by a
    Beta(``alpha``, ``alpha``) factor. Severity 0 with magnitude-driven ops is the identity."""

    def __init__(
        self,
        width: int = 3,
        depth: int = 3,
        severity: float = 3.0,
        alpha: float = 1.0,
        ops: Sequence[str] = (
            "rotate",
            "shear_x",
            "shear_y",
            "translate_x",
            "translate_y",
            "posterize",
            "solarize",
            "autocontrast",
            "equalize",
        ),
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.width, self.depth, self.severity, self.alpha = width, depth, severity, alpha
        self.ops = check_ops(ops)

    def get_params(self) -> dict:
        weights = self.random_generator.dirichlet([self.alpha] * self.width)
        mix = float(self.random_generator.beta(self.alpha, self.alpha))
        chains = [
            [self.py_random.choice(self.ops) for _ in range(self.py_random.randint(1, self.depth))]
            for _ in range(self.width)
        ]
        return {"weights": weights, "mix": mix, "chains": chains, "seed": self.py_random.getrandbits(32)}

    def apply(
        self, img: np.ndarray, weights: np.ndarray, mix: float, chains: list[list[str]], seed: int, **params
    ) -> np.ndarray:
        rng = random.Random(seed)
        mixed = np.zeros(img.shape, dtype=np.float32)
        for w, chain in zip(weights, chains):
            out = img
            for name in chain:
                out = apply_op(out, name, self.severity, rng)
            mixed += w * out.astype(np.float32)
        result = (1.0 - mix) * img.astype(np.float32) + mix * mixed
        return np.clip(np.rint(result), 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("width", "depth", "severity", "alpha", "ops")


class GridMask(A.ImageOnlyTransform):
    """GridMask (Chen et al. 2020): a grid of square holes with unit ``d`` drawn from
    ``unit_range``, random offset, and a fraction ``keep_ratio`` of the pixels kept
    (hole side = d * sqrt(1 - keep_ratio)); the grid is rotated by up to ``max_rotate``
    degrees. ``keep_ratio=1`` is the identity."""

    def __init__(
        self,
        unit_range: tuple[int, int] = (16, 48),
        keep_ratio: float = 0.6,
        max_rotate: float = 0.0,
        fill: int = 0,
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        if not 0 <= keep_ratio <= 1 or unit_range[0] < 2 or unit_range[0] > unit_range[1]:
            raise ValueError(
                "GridMask: keep_ratio in [0, 1] and 2 <= unit_range[0] <= unit_range[1], "
                f"got {keep_ratio}, {unit_range}"
            )
        self.unit_range, self.keep_ratio, self.max_rotate, self.fill = tuple(unit_range), keep_ratio, max_rotate, fill

    def get_params(self) -> dict:
        d = self.py_random.randint(*self.unit_range)
        return {
            "d": d,
            "offset": (self.py_random.randrange(d), self.py_random.randrange(d)),
            "angle": self.py_random.uniform(-self.max_rotate, self.max_rotate) if self.max_rotate else 0.0,
        }

    def mask(self, shape: tuple[int, int], d: int, offset: tuple[int, int], angle: float) -> np.ndarray:
        h, w = shape
        side = int(round(d * math.sqrt(1.0 - self.keep_ratio)))
        big = int(math.ceil(math.hypot(h, w))) + 2 * d
        ys, xs = np.ogrid[:big, :big]
        holes = (((ys + offset[0]) % d) < side) & (((xs + offset[1]) % d) < side)
        keep = (~holes).astype(np.uint8)
        if angle:
            keep = cv2.warpAffine(
                keep, cv2.getRotationMatrix2D((big / 2, big / 2), angle, 1.0), (big, big), flags=cv2.INTER_NEAREST
            )
        top, left = (big - h) // 2, (big - w) // 2
        return keep[top : top + h, left : left + w].astype(bool)

    def apply(self, img: np.ndarray, d: int, offset: tuple[int, int], angle: float, **params) -> np.ndarray:
        if self.keep_ratio >= 1:
            return img
        keep = self.mask(img.shape[:2], d, offset, angle)
        out = img.copy()
        out[~keep] = self.fill
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("unit_range", "keep_ratio", "max_rotate", "fill")
