"""The one way an image reaches the model's input size: centre square crop, then Lanczos.

Readers, the training and evaluation pipelines, the predictor and the exported graph all
resize through ``resize_images``, so a model meets its input exactly as it was trained on it
(a 96 -> 128 px upscale by PIL Lanczos, cv2 bilinear and antialiased bilinear differ enough
to cost a model trained on one of them 1.5 points when served with another). It follows
PIL's ``Image.resize(..., LANCZOS)`` (the PBC preprocessing): separable, horizontal pass then
vertical, each rounded to 0..255, PIL's support window; only PIL's fixed-point coefficients are
replaced by float32 sums (on real cells, about 1 pixel in 10,000 differs from PIL's, by 1 or
2 levels). It is written
with tensor arithmetic on the input's shape, so it exports with dynamic height and width.
"""

from __future__ import annotations

import math

import numpy as np
import torch

LANCZOS_SUPPORT = 3.0


def _sinc(x: torch.Tensor) -> torch.Tensor:
    px = math.pi * x
    return torch.where(x == 0, torch.ones_like(x), torch.sin(px) / torch.where(x == 0, torch.ones_like(px), px))


def _lanczos(x: torch.Tensor) -> torch.Tensor:
    inside = x.abs() < LANCZOS_SUPPORT
    return torch.where(inside, _sinc(x) * _sinc(x / LANCZOS_SUPPORT), torch.zeros_like(x))


def resample_matrix(in_size: int | torch.SymInt, crop: int | torch.SymInt, out_size: int) -> torch.Tensor:
    """out_size x in_size weights that resample the centred ``crop`` pixels of an axis of
    ``in_size`` to ``out_size`` (PIL's window: x in [floor(c - s + 0.5), floor(c + s + 0.5)))."""
    offset = (in_size - crop) // 2
    x = torch.arange(in_size, dtype=torch.float32) - offset  # input positions inside the crop
    scale = crop / out_size
    filterscale = max(scale, 1.0) if isinstance(scale, float) else torch.sym_max(scale, 1.0)
    support = LANCZOS_SUPPORT * filterscale
    center = (torch.arange(out_size, dtype=torch.float32)[:, None] + 0.5) * scale
    window = (x[None] >= torch.floor(center - support + 0.5)) & (x[None] < torch.floor(center + support + 0.5))
    window = window & (x[None] >= 0) & (x[None] < crop)
    weights = torch.where(window, _lanczos((x[None] - center + 0.5) / filterscale), torch.zeros(()))
    total = weights.sum(dim=1, keepdim=True)
    return weights / torch.where(total == 0, torch.ones_like(total), total)


def _round8(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x + 0.5).clamp(0, 255)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """N x C x H x W (uint8, or float in 0..255) -> float N x C x size x size, whole values in
    0..255. Non-square images are centre-cropped to a square first. An image already
    size x size comes back unchanged."""
    x = images.float()
    h, w = x.shape[-2], x.shape[-1]
    if not isinstance(h, torch.SymInt) and (h, w) == (size, size):
        return x
    crop = torch.sym_min(h, w)
    across = resample_matrix(w, crop, size).to(x.device)
    down = resample_matrix(h, crop, size).to(x.device)
    x = _round8(torch.matmul(x, across.T))  # horizontal pass first, as PIL
    return _round8(torch.matmul(down, x))


def resize_array(images: np.ndarray, size: int) -> np.ndarray:
    """``resize_images`` for uint8 arrays: H x W x C or N x H x W x C, returned in the same layout."""
    single = images.ndim == 3
    batch = images[None] if single else images
    if batch.shape[1:3] == (size, size):
        return images
    with torch.no_grad():
        x = torch.from_numpy(np.array(batch)).permute(0, 3, 1, 2)  # a copy: a memory map is read-only
        out = resize_images(x, size).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out[0] if single else out
