"""The training sampler: order, class balance and augmentation seeds as functions of the epoch.

Each item is ``(dataset position, augmentation seed)``; the dataset reseeds its pipeline
with that seed, so what a sample looks like depends only on (run seed, epoch, draw), not on
the worker that loads it or on whether the run was resumed.

The epoch comes from ``epoch_fn`` (the trainer's current epoch) when given. ``set_epoch``
alone is not enough: with loader workers, the DataLoader iterator prefetches (and so
iterates the sampler) *before* Lightning calls ``set_epoch``, so a resumed run replayed
epoch 0's order and augmentations in its first epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[tuple[int, ...]]):
    """A shuffled epoch (each position once) or, with ``weighted``, ``len(labels)`` draws
    with replacement by inverse class frequency (every class equally often in expectation).

    With ``size_fn`` (progressive resizing) each key also carries the epoch's input size:
    the sampler runs in the main process, so loader workers, persistent ones included, learn
    the size with every key."""

    def __init__(
        self,
        labels: np.ndarray,
        seed: int,
        weighted: bool = False,
        n_classes: int | None = None,
        epoch_fn: Callable[[], int | None] | None = None,
        size_fn: Callable[[int], int] | None = None,
    ) -> None:
        self.n = len(labels)
        self.seed, self.epoch, self.weighted, self.epoch_fn = seed, 0, weighted, epoch_fn
        self.size_fn = size_fn
        counts = np.bincount(labels, minlength=n_classes or 0).astype(np.float64)
        self.weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        known = self.epoch_fn() if self.epoch_fn is not None else None
        # Without a trainer or set_epoch calls, consecutive epochs still differ.
        epoch = known if known is not None else self.epoch
        self.epoch = epoch + 1
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if self.weighted:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        else:
            order = torch.randperm(self.n, generator=g)
        seeds = torch.randint(0, 2**31 - 1, (self.n,), generator=g)
        if self.size_fn is not None:
            size = self.size_fn(epoch)
            return iter((i, s, size) for i, s in zip(order.tolist(), seeds.tolist()))
        return iter(zip(order.tolist(), seeds.tolist()))
