"""The training sampler: order, class balance and augmentation seeds as functions of the epoch.

Each item is ``(dataset position, augmentation seed)``; the dataset reseeds its pipeline
with that seed, so what a sample looks like depends only on (run seed, epoch, draw), not on
the worker that loads it or on whether the run was resumed. Lightning calls ``set_epoch``
before every epoch, which is what makes a resumed run continue exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[tuple[int, int]]):
    """A shuffled epoch (each position once) or, with ``weighted``, ``len(labels)`` draws
    with replacement by inverse class frequency (every class equally often in expectation)."""

    def __init__(self, labels: np.ndarray, seed: int, weighted: bool = False, n_classes: int | None = None) -> None:
        self.n = len(labels)
        self.seed, self.epoch, self.weighted = seed, 0, weighted
        counts = np.bincount(labels, minlength=n_classes or 0).astype(np.float64)
        self.weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # Without set_epoch calls (e.g. inside DDP's sampler wrapper) epochs still differ.
        epoch, self.epoch = self.epoch, self.epoch + 1
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if self.weighted:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        else:
            order = torch.randperm(self.n, generator=g)
        seeds = torch.randint(0, 2**31 - 1, (self.n,), generator=g)
        return iter(zip(order.tolist(), seeds.tolist()))
