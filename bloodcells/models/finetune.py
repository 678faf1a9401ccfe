"""Staged fine-tuning as a pure function of the epoch, so it survives resume and DDP.

The optimizer gets one param group per backbone block (timm's coarse ``group_matcher``)
plus one for the head, all fixed from the start. A stage says from which epoch the last K
blocks train and at what fraction of the head LR; every other block is frozen: LR 0,
``requires_grad=False`` and its BatchNorm layers in eval mode (running statistics frozen).
Nothing is added to the optimizer mid-training (Lightning's ``BackboneFinetuning`` does,
which breaks under DDP, on resume and with LR schedulers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from timm.models import group_parameters
from torch import nn

from bloodcells.core.compat import batchnorm_base
from bloodcells.core.errors import ConfigError


@dataclass(frozen=True)
class Stage:
    """From ``epoch`` on, the last ``unfreeze`` blocks train at ``lr_factor`` x head LR.

    ``unfreeze``: an int (number of blocks, counted from the top), a float in (0, 1]
    (fraction of the blocks, rounded up), or ``"all"``.
    """

    epoch: int
    unfreeze: int | float | str = 0
    lr_factor: float = 0.1

    def trainable_blocks(self, n_blocks: int) -> int:
        if self.unfreeze == "all":
            return n_blocks
        if isinstance(self.unfreeze, float):
            if not 0 <= self.unfreeze <= 1:
                raise ConfigError(f"finetune.stages: unfreeze fraction must be in [0, 1], got {self.unfreeze}")
            return math.ceil(self.unfreeze * n_blocks)
        if isinstance(self.unfreeze, int) and self.unfreeze >= 0:
            return min(self.unfreeze, n_blocks)
        raise ConfigError(f"finetune.stages: unfreeze must be an int, a fraction or 'all', got {self.unfreeze!r}")


def parse_stage(spec: dict) -> Stage:
    try:
        return Stage(**spec)
    except TypeError:
        raise ConfigError(
            f"finetune.stages: bad stage {dict(spec)}; a stage has epoch, unfreeze and lr_factor"
        ) from None


class FinetuneSchedule:
    """The stages of a run, sorted by epoch; the first must start at epoch 0."""

    def __init__(self, stages: Sequence[dict | Stage], n_blocks: int) -> None:
        self.stages = sorted((s if isinstance(s, Stage) else parse_stage(s) for s in stages), key=lambda s: s.epoch)
        if not self.stages or self.stages[0].epoch != 0:
            raise ConfigError("finetune.stages must start with a stage at epoch 0")
        self.n_blocks = n_blocks
        for stage in self.stages:
            stage.trainable_blocks(n_blocks)  # a bad unfreeze spec fails now, not mid-training

    def phase(self, epoch: int) -> int:
        """Index of the stage in force at ``epoch``."""
        return max(i for i, s in enumerate(self.stages) if s.epoch <= epoch)

    @property
    def last_phase(self) -> int:
        return len(self.stages) - 1

    def block_multipliers(self, epoch: int) -> list[float]:
        """LR multiplier (relative to the head LR) per backbone block, 0 for frozen ones."""
        stage = self.stages[self.phase(epoch)]
        k = stage.trainable_blocks(self.n_blocks)
        return [stage.lr_factor if i >= self.n_blocks - k else 0.0 for i in range(self.n_blocks)]


def backbone_blocks(backbone: nn.Module) -> list[list[str]]:
    """Parameter names of the backbone, grouped into blocks from input to output.

    Uses timm's coarse group matcher (stem, then stages, then the final conv), which every
    timm model defines.
    """
    groups = group_parameters(backbone, backbone.group_matcher(coarse=True))
    return [names for _, names in sorted(groups.items())]


def batchnorm_blocks(backbone: nn.Module, blocks: list[list[str]]) -> list[list[nn.Module]]:
    """The BatchNorm layers of each block (a BN layer belongs to the block of its weight)."""
    block_of = {name: i for i, names in enumerate(blocks) for name in names}
    result: list[list[nn.Module]] = [[] for _ in blocks]
    batchnorm = batchnorm_base()
    for name, module in backbone.named_modules():
        if isinstance(module, batchnorm) and f"{name}.weight" in block_of:
            result[block_of[f"{name}.weight"]].append(module)
    return result
