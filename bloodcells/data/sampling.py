"""Class-balanced sampling: every class drawn equally often in expectation."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler


def weighted_sampler(labels: np.ndarray, n_classes: int, seed: int) -> WeightedRandomSampler:
    """WeightedRandomSampler by inverse class frequency, one epoch = len(labels) draws.

    The generator is seeded, so under DDP every rank draws the same sequence and Lightning's
    ``DistributedSamplerWrapper`` hands each rank a disjoint share of it.
    """
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = 1.0 / counts[labels]
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), num_samples=len(labels), replacement=True, generator=generator)
