"""Build the optimizer over the module's fixed param groups (head first, then blocks)."""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import get_class


def make_optimizer(
    param_groups: list[dict], optimizer: str, head_weight_decay: float | None = None, **kwargs: Any
) -> torch.optim.Optimizer:
    """``optimizer`` (a class path, e.g. ``torch.optim.Adam``) over ``param_groups``.

    ``head_weight_decay`` overrides the weight decay of the group named ``head``: the
    reports' L2 on the dense head layer (Keras L2(l) is about weight decay 2*l with Adam).
    """
    if head_weight_decay is not None:
        for group in param_groups:
            if group.get("name") == "head":
                group["weight_decay"] = head_weight_decay
    return get_class(optimizer)(param_groups, **kwargs)
