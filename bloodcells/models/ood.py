"""Foreign-image scores inside the model, so the exported graph computes them too.

A scorer maps an image (and its pooled backbone features and logits) to a score that grows
with how unlike the training cells it is, divided by the threshold at which 95% of the
validation cells are accepted: ``score <= 1`` means in distribution. Its arrays are fitted
after training (``bloodcells.inference.ood``) and carried in the checkpoint as plain tensors.

Deep scores, on the features:

- ``mahalanobis``: the smallest class-conditional Mahalanobis distance with a shared,
  shrunk covariance (Lee et al. 2018), computed as a Euclidean distance after whitening;
- ``knn``: 1 - the cosine similarity to the k-th nearest training feature (Sun et al. 2022);
- ``msp``: 1 - the top softmax probability (the baseline of Hendrycks & Gimpel 2017).

With ``pixels``, the deep score is combined (the larger of the two, each scaled to its own
95% point) with a Mahalanobis distance on ten low-level statistics of the image itself
(colour means and spreads, edge energy, chroma): a fine-tuned network can map a blank frame
or noise close to a class, but those statistics of a stained smear are far from either.
"""

from __future__ import annotations

import torch
from torch import nn

METHODS = ("mahalanobis", "knn", "msp")


def image_statistics(images: torch.Tensor) -> torch.Tensor:
    """N x 10 statistics of 0-255 images (N x 3 x H x W): per channel mean, log spread and
    log edge energy (mean absolute difference of neighbours), and the mean chroma."""
    x = images.float() / 255
    mean = x.mean(dim=(2, 3))
    spread = (x - mean[:, :, None, None]).pow(2).mean(dim=(2, 3)).sqrt()
    edges = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(2, 3)) + (x[..., 1:] - x[..., :-1]).abs().mean(dim=(2, 3))
    chroma = (x.max(dim=1).values - x.min(dim=1).values).mean(dim=(1, 2))
    return torch.cat([mean, (spread + 1e-3).log(), (edges + 1e-3).log(), chroma.unsqueeze(1)], dim=1)


class OODScorer(nn.Module):
    def __init__(
        self, method: str, threshold: float, arrays: dict[str, torch.Tensor], k: int = 10, pixels: bool = False
    ) -> None:
        super().__init__()
        self.method, self.threshold, self.k, self.pixels = method, float(threshold), int(k), bool(pixels)
        for name, value in arrays.items():
            self.register_buffer(name, value.float())

    @property
    def name(self) -> str:
        """The score as reports name it: the deep method, ``+pixels`` with image statistics."""
        return self.method + ("+pixels" if self.pixels else "")

    def deep(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The unnormalised deep score of each image (N)."""
        if self.method == "msp":
            return 1 - logits.float().softmax(dim=1).max(dim=1).values
        f = features.float()
        if self.method == "knn":
            sims = nn.functional.normalize(f, dim=1) @ self.bank.T
            return 1 - sims.topk(min(self.k, self.bank.shape[0]), dim=1).values[:, -1]
        # (f - m)^T P (f - m) = |W^T f - W^T m|^2 with P = W W^T: one D x D product per image
        whitened = f @ self.projection
        return (whitened.unsqueeze(1) - self.centres.unsqueeze(0)).pow(2).sum(dim=2).min(dim=1).values

    def stats_distance(self, stats: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of image statistics (N x 10) from the training cells' (N)."""
        return ((stats - self.pixel_centre) @ self.pixel_projection).pow(2).sum(dim=1)

    def image_distance(self, images: torch.Tensor) -> torch.Tensor:
        return self.stats_distance(image_statistics(images))

    def raw(self, images: torch.Tensor, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        score = self.deep(features, logits)
        if self.pixels:
            score = torch.maximum(score / self.scales[0, 0], self.image_distance(images) / self.scales[0, 1])
        return score

    def forward(self, images: torch.Tensor, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Score / threshold for images at the model's input size: at most 1 for the 95% of
        validation cells accepted."""
        return self.raw(images, features, logits) / self.threshold

    def state(self) -> dict:
        """What the checkpoint stores: the method, its numbers and its arrays."""
        arrays = {name: buf.detach().cpu().clone() for name, buf in self.named_buffers()}
        return {
            "method": self.method,
            "threshold": self.threshold,
            "k": self.k,
            "pixels": self.pixels,
            "arrays": arrays,
        }
