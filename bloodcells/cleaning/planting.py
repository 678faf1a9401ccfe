"""Plant known pollution into a clean dataset, to measure what cleaning finds.

Mirrors the course dataset's problems: an overlay image repeated many times with random
labels, exact copies, near copies (JPEG re-encoded, resized, flipped, rotated, brightness-
shifted) and colour outliers. Returns the polluted images and labels plus the truth.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw


@dataclass
class Planted:
    images: np.ndarray
    labels: np.ndarray
    n_clean: int
    overlay: list[int]
    exact_copies: dict[int, int]  # planted index -> original index
    near_copies: dict[int, tuple[int, str]]
    colour_outliers: list[int]


def overlay_image(size: int, rng: np.random.Generator) -> np.ndarray:
    """A meme-like picture: flat colour, a shape and text-like strokes."""
    im = Image.new("RGB", (size, size), tuple(int(x) for x in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(im)
    draw.ellipse([size // 5, size // 5, size * 4 // 5, size * 4 // 5], fill=(250, 220, 40), outline=(0, 0, 0), width=3)
    draw.text((size // 10, size // 20), "LOL", fill=(255, 255, 255))
    draw.rectangle([0, size * 3 // 4, size, size], fill=(20, 20, 20))
    return np.asarray(im)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def near_copy(image: np.ndarray, kind: str) -> np.ndarray:
    h, w = image.shape[:2]
    if kind == "jpeg":
        return jpeg(image, 70)
    if kind == "resize":
        small = Image.fromarray(image).resize((w * 2 // 3, h * 2 // 3), Image.Resampling.BILINEAR)
        return np.asarray(small.resize((w, h), Image.Resampling.BICUBIC))
    if kind == "flip":
        return image[:, ::-1].copy()
    if kind == "rotate":
        return np.rot90(image).copy()
    if kind == "brightness":
        return np.clip(image.astype(np.int16) + 20, 0, 255).astype(np.uint8)
    raise ValueError(kind)


NEAR_KINDS = ("jpeg", "resize", "flip", "rotate", "brightness")


def plant_pollution(
    images: np.ndarray,
    labels: np.ndarray,
    n_classes: int = 8,
    overlay_copies: int = 300,
    exact: int = 20,
    near: int = 20,
    outliers: int = 5,
    seed: int = 0,
) -> Planted:
    rng = np.random.default_rng(seed)
    n = len(images)
    size = images.shape[1]
    originals = rng.choice(n, exact + near, replace=False)
    extra, extra_labels = [], []
    overlay = overlay_image(size, rng)
    extra += [overlay] * overlay_copies
    extra_labels += rng.integers(0, n_classes, overlay_copies).tolist()
    exact_copies, near_copies = {}, {}
    for i in originals[:exact]:
        exact_copies[n + len(extra)] = int(i)
        extra.append(images[i])
        extra_labels.append(int(labels[i]))
    for k, i in enumerate(originals[exact:]):
        kind = NEAR_KINDS[k % len(NEAR_KINDS)]
        near_copies[n + len(extra)] = (int(i), kind)
        extra.append(near_copy(images[i], kind))
        extra_labels.append(int(labels[i]))
    colour = []
    for i in rng.choice(np.setdiff1d(np.arange(n), originals), outliers, replace=False):
        colour.append(n + len(extra))
        tinted = images[i].astype(np.float32) * np.array([0.2, 1.0, 0.2]) + np.array([0, 60, 0])
        extra.append(np.clip(tinted, 0, 255).astype(np.uint8))
        extra_labels.append(int(labels[i]))
    return Planted(
        images=np.concatenate([images, np.stack(extra)]),
        labels=np.concatenate([labels, np.array(extra_labels, dtype=labels.dtype)]),
        n_clean=n,
        overlay=list(range(n, n + overlay_copies)),
        exact_copies=exact_copies,
        near_copies=near_copies,
        colour_outliers=colour,
    )
