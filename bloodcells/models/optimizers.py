"""Build the optimizer over the module's fixed param groups (head first, then blocks)."""

from __future__ import annotations

from typing import Any

import torch

from bloodcells.models.hparams import OPTIMIZERS


def make_optimizer(
    param_groups: list[dict], name: str, head_weight_decay: float | None = None, **kwargs: Any
) -> torch.optim.Optimizer:
    """The optimizer called ``name`` (a key of ``OPTIMIZERS``, never a class path: the
    settings come from a checkpoint too) over ``param_groups``.

    ``head_weight_decay`` overrides the weight decay of the group named ``head``: the
    reports' L2 on the dense head layer (Keras L2(l) is about weight decay 2*l with Adam).
    """
    if head_weight_decay is not None:
        for group in param_groups:
            if group.get("name") == "head":
                group["weight_decay"] = head_weight_decay
    return OPTIMIZERS[name](param_groups, **kwargs)
