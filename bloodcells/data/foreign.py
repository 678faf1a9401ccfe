"""A suite of foreign images, no download: what a cell classifier meets besides cells.

- ``meme``: real cells defaced with a shape, a bar and text, as the course data's
  pollution was (``bloodcells.cleaning.planting``);
- ``photo``: random crops of the photographs matplotlib ships (``sample_data``);
- ``noise``: uniform and smoothed colour noise;
- ``flat``: blank frames of one colour (white, black, grey, random), lightly noisy;
- ``colour_shift``: real cells with their colour channels permuted and inverted;
- ``blur``: real cells blurred until no structure is left (sigma 6).

Each kind is a seeded function of the real cells given (N x H x W x 3 uint8), so a suite
made from validation cells never contains a test cell.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

import cv2
import matplotlib
import numpy as np
from PIL import Image, ImageDraw

PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")


@cache
def shipped_photos() -> tuple[np.ndarray, ...]:
    folder = Path(matplotlib.get_data_path()) / "sample_data"
    return tuple(np.asarray(Image.open(folder / name).convert("RGB")) for name in PHOTOS)


def deface(cell: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = cell.shape[0]
    im = Image.fromarray(cell)
    draw = ImageDraw.Draw(im)
    colour = tuple(int(x) for x in rng.integers(0, 256, 3))
    x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
    draw.ellipse([x0, y0, x0 + size // 2, y0 + size // 2], fill=colour, outline=(0, 0, 0), width=2)
    draw.rectangle([0, size * 3 // 4, size, size], fill=(20, 20, 20))
    draw.text((size // 10, size * 4 // 5), "LOL", fill=(255, 255, 255))
    return np.asarray(im)


def memes(cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.stack([deface(c, rng) for c in cells])


def photos(cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = cells.shape[1]
    out = []
    for _ in range(len(cells)):
        photo = shipped_photos()[rng.integers(len(PHOTOS))]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 8, min(h, w)))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.Resampling.LANCZOS)
        out.append(np.asarray(crop))
    return np.stack(out)


def noise(cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    raw = rng.integers(0, 256, cells.shape, dtype=np.uint8)
    smooth = [cv2.GaussianBlur(a, (0, 0), 3) if i % 2 else a for i, a in enumerate(raw)]
    return np.stack(smooth)


def flat(cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    fixed = np.array([[255, 255, 255], [0, 0, 0], [128, 128, 128]])
    colours = np.concatenate([fixed, rng.integers(0, 256, (max(0, len(cells) - 3), 3))])[: len(cells)]
    frames = np.broadcast_to(colours[:, None, None, :], cells.shape).astype(np.float32)
    return np.clip(frames + rng.normal(0, 2, cells.shape), 0, 255).astype(np.uint8)


def colour_shift(cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.stack([255 - c[..., rng.permutation(3)] for c in cells])


def heavy_blur(cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(c, (0, 0), 6) for c in cells])


KINDS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "meme": memes,
    "photo": photos,
    "noise": noise,
    "flat": flat,
    "colour_shift": colour_shift,
    "blur": heavy_blur,
}


def foreign_suite(cells: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """One foreign image per given cell for every kind (same shape and dtype as ``cells``)."""
    cells = np.ascontiguousarray(cells)
    return {kind: make(cells, np.random.default_rng([seed, i])) for i, (kind, make) in enumerate(KINDS.items())}
