"""Stain normalisation inside the model, Reinhard's or Macenko's: every image's colours are
moved to the training set's before the network sees it.

Reinhard et al. (2001): per image and per LAB channel, ``(x - mean_image) / std_image *
std_reference + mean_reference``. The reference (6 numbers) is measured on the training split
and travels in the checkpoint as a buffer, so training, ``predict``, ensembles and the
exported graph normalise the same way with nothing else to carry. Written in tensor ops
(sRGB <-> linear <-> XYZ <-> LAB, D65) so it exports to ONNX like the rest of ``forward``.

Macenko et al. (2009): optical density, the plane of its two leading directions, the stain
vectors at the 1st/99th percentile angles, concentrations by least squares, rescaled to the
reference's 99th percentiles and recomposed with the reference stains (the reference: medians
over training images, 8 numbers). Matches torchstain's numpy MacenkoNormalizer.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bloodcells.core.errors import DataError

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

    def fit_reference(self, images: np.ndarray) -> None:
        """The training split's statistics (uint8 N x H x W x 3)."""
        self.set_reference(*lab_statistics(images))

    def set_reference(self, mean: list[float], std: list[float]) -> None:
        self.reference_mean.copy_(torch.tensor(mean))
        self.reference_std.copy_(torch.tensor(std))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        lab = rgb_to_lab(images)
        mean = lab.mean(dim=(2, 3), keepdim=True)
        std = lab.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
        normed = (lab - mean) / std * self.reference_std.view(1, 3, 1, 1) + self.reference_mean.view(1, 3, 1, 1)
        return lab_to_rgb(normed)


MACENKO_IO = 240.0
"""Transmitted light intensity of Macenko's optical density (the reference implementation's)."""
MACENKO_BETA = 0.15
MACENKO_ALPHA = 0.01
MACENKO_MIN_PIXELS = 16
"""An image with fewer stained pixels than this (a blank frame) passes through unchanged."""


def quantile_of_sorted(values: torch.Tensor, count: torch.Tensor, q: float) -> torch.Tensor:
    """np.percentile's linear interpolation over the first ``count`` (N) entries of each row of
    ascending ``values`` (N x P): the valid entries come first, padding after."""
    position = q * (count.float() - 1).clamp_min(0)
    low = position.floor().long()
    high = (low + 1).clamp(max=values.shape[1] - 1).minimum((count - 1).clamp_min(0))
    frac = position - low.float()
    lo, hi = values.gather(1, low.view(-1, 1))[:, 0], values.gather(1, high.view(-1, 1))[:, 0]
    return lo + (hi - lo) * frac


def top_plane(cov: torch.Tensor, steps: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    """The two leading eigenvectors (N x 3 each) of N symmetric 3 x 3 matrices by power
    iteration (matrix products only: it exports to ONNX, unlike ``eigh``), each with its first
    component >= 0; the plane they span is what Macenko's method needs."""
    n = cov.shape[0]
    first = torch.ones(n, 3, 1, dtype=cov.dtype, device=cov.device)
    second = torch.tensor([1.0, -1.0, 0.5], dtype=cov.dtype, device=cov.device).view(1, 3, 1).repeat(n, 1, 1)
    for _ in range(steps):
        first = cov @ first
        first = first / first.norm(dim=1, keepdim=True).clamp_min(1e-12)
        second = cov @ second
        second = second - (first * second).sum(1, keepdim=True) * first
        second = second / second.norm(dim=1, keepdim=True).clamp_min(1e-12)
    first, second = first[..., 0], second[..., 0]
    first = torch.where(first[:, :1] < 0, -first, first)
    second = torch.where(second[:, :1] < 0, -second, second)
    return first, second


def _atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """atan2 from atan and where (ONNX has no atan2)."""
    base = torch.atan(y / torch.where(x == 0, torch.full_like(x, 1e-12), x))
    base = torch.where(x < 0, base + torch.where(y >= 0, torch.pi, -torch.pi), base)
    return base


def macenko_stains(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image (N x 3 x H x W, 0..255): the stain matrix (N x 3 x 2, haematoxylin first),
    the stain concentrations of every pixel (N x 2 x HW), their 99th percentiles (N x 2) and
    whether the image had enough stained pixels to estimate them (N) (Macenko et al. 2009)."""
    n = images.shape[0]
    od = -torch.log((images.float().reshape(n, 3, -1) + 1) / MACENKO_IO)  # N x 3 x P
    stained = (od >= MACENKO_BETA).all(dim=1)  # N x P
    count = stained.sum(1)
    w = stained.float().unsqueeze(1)
    mean = (od * w).sum(2, keepdim=True) / count.clamp_min(2).view(-1, 1, 1)
    centred = (od - mean) * w
    cov = centred @ centred.transpose(1, 2) / (count.clamp_min(2) - 1).view(-1, 1, 1)
    first, second = top_plane(cov)
    plane = torch.stack([second, first], dim=2)  # N x 3 x 2: eigh's order (middle, largest)
    t = plane.transpose(1, 2) @ od  # N x 2 x P
    phi = _atan2(t[:, 1], t[:, 0])
    phi = torch.where(stained, phi, torch.full_like(phi, 10.0)).sort(dim=1).values  # padding after the valid
    lo = quantile_of_sorted(phi, count, MACENKO_ALPHA)
    hi = quantile_of_sorted(phi, count, 1 - MACENKO_ALPHA)
    v_lo = (plane @ torch.stack([lo.cos(), lo.sin()], dim=1).unsqueeze(2))[..., 0]
    v_hi = (plane @ torch.stack([hi.cos(), hi.sin()], dim=1).unsqueeze(2))[..., 0]
    lo_first = (v_lo[:, :1] > v_hi[:, :1]).unsqueeze(2)
    stains = torch.where(lo_first, torch.stack([v_lo, v_hi], 2), torch.stack([v_hi, v_lo], 2))
    gram = stains.transpose(1, 2) @ stains  # 2 x 2 normal equations: least squares without lstsq
    det = (gram[:, 0, 0] * gram[:, 1, 1] - gram[:, 0, 1] * gram[:, 1, 0]).clamp_min(1e-12).view(-1, 1, 1)
    inverse = (
        torch.stack(
            [torch.stack([gram[:, 1, 1], -gram[:, 0, 1]], 1), torch.stack([-gram[:, 1, 0], gram[:, 0, 0]], 1)], 1
        )
        / det
    )
    conc = inverse @ stains.transpose(1, 2) @ od  # N x 2 x P
    full = torch.full_like(count, od.shape[2])
    top = torch.stack([quantile_of_sorted(conc[:, k].sort(dim=1).values, full, 0.99) for k in range(2)], 1)
    return stains, conc, top, count >= MACENKO_MIN_PIXELS


class MacenkoNorm(nn.Module):
    """Macenko stain normalisation: each image's two stain vectors (found in optical density
    from the extreme angles of its stained pixels) and concentrations are replaced by the
    reference's; the reference (a 3 x 2 stain matrix and two concentration maxima, the medians
    over training images) travels in the checkpoint as buffers. Tensor ops only: it exports."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("reference_stains", torch.tensor([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]]))
        self.register_buffer("reference_max", torch.tensor([1.9705, 1.0308]))

    def fit_reference(self, images: np.ndarray, most: int = 2000, batch: int = 128) -> None:
        """Medians over up to ``most`` evenly spaced images (uint8 N x H x W x 3)."""
        chosen = images[np.linspace(0, len(images) - 1, min(most, len(images))).astype(int)]
        stains, tops = [], []
        for start in range(0, len(chosen), batch):
            x = torch.from_numpy(np.ascontiguousarray(chosen[start : start + batch])).permute(0, 3, 1, 2)
            s, _, top, ok = macenko_stains(x)
            stains.append(s[ok])
            tops.append(top[ok])
        stains, tops = torch.cat(stains), torch.cat(tops)
        if not len(stains):
            raise DataError("stain_norm=macenko: no training image has enough stained pixels to fit a reference")
        reference = stains.median(dim=0).values
        self.reference_stains.copy_(reference / reference.norm(dim=0, keepdim=True))
        self.reference_max.copy_(tops.median(dim=0).values)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        _, conc, top, ok = macenko_stains(images)
        conc = conc * (self.reference_max.view(1, 2, 1) / top.clamp_min(1e-6).unsqueeze(2))
        normed = (MACENKO_IO * torch.exp(-self.reference_stains.unsqueeze(0) @ conc)).clamp(0, 255)
        return torch.where(ok.view(-1, 1, 1, 1), normed.reshape(n, 3, h, w), images.float())


STAIN_NORMS = {"reinhard": ReinhardNorm, "macenko": MacenkoNorm}
"""``model.stain_norm`` names: each normaliser fits its reference on the training split."""
