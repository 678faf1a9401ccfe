"""Reinhard stain normalisation inside the model: every image's colour statistics in CIELAB are
moved to the training set's before the network sees it.

Reinhard et al. (2001): per image and per LAB channel, ``(x - mean_image) / std_image *
std_reference + mean_reference``. The reference (6 numbers) is measured on the training split
and travels in the checkpoint as a buffer, so training, ``predict``, ensembles and the
exported graph normalise the same way with nothing else to carry. Written in tensor ops
(sRGB <-> linear <-> XYZ <-> LAB, D65) so it exports to ONNX like the rest of ``forward``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

RGB_TO_XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
XYZ_TO_RGB = torch.linalg.inv(RGB_TO_XYZ)
WHITE = torch.tensor([0.950456, 1.0, 1.088754])
EPS = 1e-6


def _srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).clamp_min(EPS) ** 2.4)


def _linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(EPS) ** (1 / 2.4) - 0.055)


def _f(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > 0.008856, t.clamp_min(EPS) ** (1 / 3), 7.787 * t + 16 / 116)


def _f_inv(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > 0.206893, t**3, (t - 16 / 116) / 7.787)


def rgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W in 0..255 -> CIELAB (L in 0..100)."""
    rgb = _srgb_to_linear(images.float() / 255.0)
    xyz = torch.einsum("ij,njhw->nihw", RGB_TO_XYZ.to(images.device), rgb) / WHITE.to(images.device).view(1, 3, 1, 1)
    fx, fy, fz = _f(xyz).unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIELAB -> N x 3 x H x W in 0..255 (float, clamped)."""
    fy = (lab[:, 0] + 16) / 116
    fx, fz = fy + lab[:, 1] / 500, fy - lab[:, 2] / 200
    xyz = torch.stack([_f_inv(fx), _f_inv(fy), _f_inv(fz)], dim=1) * WHITE.to(lab.device).view(1, 3, 1, 1)
    rgb = torch.einsum("ij,njhw->nihw", XYZ_TO_RGB.to(lab.device), xyz)
    return _linear_to_srgb(rgb) * 255.0


def lab_statistics(images: np.ndarray, batch: int = 256) -> tuple[list[float], list[float]]:
    """Mean over images of each image's LAB channel means and standard deviations: the
    reference a training split defines (uint8 N x H x W x 3)."""
    means, stds = [], []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch])).permute(0, 3, 1, 2)
        lab = rgb_to_lab(x)
        means.append(lab.mean(dim=(2, 3)))
        stds.append(lab.std(dim=(2, 3)))
    return torch.cat(means).mean(0).tolist(), torch.cat(stds).mean(0).tolist()


class ReinhardNorm(nn.Module):
    """uint8-range images in, uint8-range images out, with the reference's LAB statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("reference_mean", torch.tensor([70.0, 10.0, -5.0]))
        self.register_buffer("reference_std", torch.tensor([15.0, 8.0, 6.0]))

    def set_reference(self, mean: list[float], std: list[float]) -> None:
        self.reference_mean.copy_(torch.tensor(mean))
        self.reference_std.copy_(torch.tensor(std))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        lab = rgb_to_lab(images)
        mean = lab.mean(dim=(2, 3), keepdim=True)
        std = lab.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
        normed = (lab - mean) / std * self.reference_std.view(1, 3, 1, 1) + self.reference_mean.view(1, 3, 1, 1)
        return lab_to_rgb(normed)
