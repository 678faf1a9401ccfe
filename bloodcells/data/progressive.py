"""Progressive resizing: the training input size as a function of how far the run has gone.

Small inputs early are cheap steps (a 96-px step of lite0 costs about half a 128-px one), so
a clocked run trains more of them; the last phase trains at the model's input size, the
size validation, test and inference always use. Progress is measured on the length of the
LR schedule (the time budget's fitted length when there is one), so the phases follow the
schedule when the budget re-fits it. Sizes change only between epochs (a batch never mixes
sizes): each epoch trains at the size of the phase that holds its middle step, so every
phase gets its share of the steps to within half an epoch, however few epochs fit.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl

from bloodcells.core.errors import ConfigError


def planned_epochs(trainer: pl.Trainer) -> float | None:
    """The length the LR schedule runs to, in epochs: the ``max_epochs`` of the trainer's
    scheduler (``models.schedulers.StagedLR``; fractional once a time budget fitted it), else
    ``trainer.max_epochs``; None when neither is known. Read by attribute: the data room
    does not import the models room."""
    for config in trainer.lr_scheduler_configs:
        length = getattr(config.scheduler, "max_epochs", None)
        if isinstance(length, (int, float)) and length > 0:
            return float(length)
    return float(trainer.max_epochs) if trainer.max_epochs and trainer.max_epochs > 0 else None


class SizeSchedule:
    """Phases ``[(from_fraction, size), ...]``: from that fraction of the run on, train at that size."""

    def __init__(self, phases: Sequence[Sequence[float]], image_size: int) -> None:
        where = "data.progressive"
        try:
            parsed = [(float(start), size) for start, size in phases]
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}={phases!r} must be a list of [from_fraction, size] pairs, e.g. [[0, 96], [0.5, 128]]"
            ) from None
        if not parsed or parsed[0][0] != 0.0:
            raise ConfigError(f"{where}={phases!r}: the first phase must start at fraction 0")
        starts = [start for start, _ in parsed]
        if any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= 1.0:
            raise ConfigError(f"{where}={phases!r}: the fractions must increase from 0 and stay under 1")
        for _, size in parsed:
            if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 4096:
                raise ConfigError(f"{where}={phases!r}: sizes must be integers from 8 to 4096 (pixels)")
        if parsed[-1][1] != image_size:
            raise ConfigError(
                f"{where}={phases!r}: the last phase must train at data.image_size={image_size}, the size "
                "validation, test and inference use"
            )
        self.phases = parsed

    def size_at(self, progress: float) -> int:
        """The training size at ``progress`` (0 = the first step, 1 = the end of the schedule)."""
        return next(size for start, size in reversed(self.phases) if progress >= start)

    def epoch_size(self, epoch: int, total: float) -> int:
        """The size epoch ``epoch`` (0-based) of a ``total``-epoch schedule trains at: that of
        the phase holding the epoch's middle step (the last epoch may be a part of one). By
        its first step instead, the last phase of a 2.1-epoch run would get 0.1 of an epoch,
        not half the run, and the model would meet the size it is tested at 33 s before the end."""
        middle = epoch + min(1.0, max(0.0, total - epoch)) / 2
        return self.size_at(middle / total)

    def relative_cost(self, epoch: int, total: float, measured_size: int) -> float:
        """A step's cost in epoch ``epoch`` of ``total`` over that of a step at ``measured_size``:
        the pixels a convolutional network computes on scale with the area (the time budget's
        model of the epochs it has not timed yet; every epoch re-times it)."""
        return (self.epoch_size(epoch, total) / measured_size) ** 2

    def __repr__(self) -> str:
        return " -> ".join(f"{size} px from {start:g}" for start, size in self.phases)
