"""bf16 autocast on CPU without its slow depthwise convolutions, and which precision pays here.

On a CPU with AMX (Intel Sapphire Rapids and later), oneDNN runs 1x1 convolutions, most of an
EfficientNet's arithmetic, about 4x faster in bfloat16 than in float32, but computes the
weight gradient of a depthwise convolution several times slower. Under
``trainer.precision=bf16-mixed`` the lite0 training step therefore ran at 0.68-0.78x the
float32 one; with the depthwise layers kept in float32 under CPU autocast it runs at
1.11-1.14x, and a 30-minute budget at 128 px fits 1.15x the steps (at 96 px inside the
framework: level; BENCHMARKS.md, "bf16 on a CPU with AMX"). The swap changes the layers'
class only: parameters, names and state_dict keys stay as they were, and outside CPU autocast
they compute exactly as before. Without AMX bf16 stays slower than float32, so the precision
is the user's choice; a fit logs which one pays.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class Float32UnderCpuAutocast:
    """Mixin for a convolution: leave CPU autocast, compute in the weights' dtype (float32
    under ``bf16-mixed``)."""

    original_class: type
    """The layer's class before the swap (set on each generated subclass)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.to(self.weight.dtype))
        return super().forward(x)

    def __reduce_ex__(self, protocol: int) -> tuple:
        # the generated class has no importable name: pickle (torch.save of a whole model,
        # spawned workers) and deepcopy rebuild the original layer and swap it again
        return _rebuild_kept, (self.original_class, self.__dict__)


def _rebuild_kept(original_class: type, state: dict) -> nn.Module:
    module = original_class.__new__(original_class)
    module.__dict__.update(state)
    keep_depthwise_float32(module)
    return module


_SUBCLASSES: dict[type, type] = {}


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def keep_depthwise_float32(model: nn.Module) -> int:
    """Make every depthwise convolution of ``model`` compute in float32 under CPU autocast.

    Returns how many layers were changed (a model without depthwise layers: 0)."""
    changed = 0
    for module in model.modules():
        cls = type(module)
        if is_depthwise(module) and not issubclass(cls, Float32UnderCpuAutocast):
            if cls not in _SUBCLASSES:
                _SUBCLASSES[cls] = type(
                    f"Float32{cls.__name__}", (Float32UnderCpuAutocast, cls), {"original_class": cls}
                )
            module.__class__ = _SUBCLASSES[cls]
            changed += 1
    return changed


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags as Linux lists them, or None where they cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


def precision_advice(precision: str, device_type: str, flags: set[str] | None) -> str | None:
    """A line for the log where ``trainer.precision`` is the slower choice on this CPU.

    Only a CPU with AMX runs bfloat16 convolutions faster than float32 (1.15x the steps for
    lite0 at 128 px in a 30-minute budget, level at 96 px; without AMX the bf16 step was
    0.87-0.92x: BENCHMARKS.md). Off CPU, or where the flags are unknown, there is nothing to say."""
    if device_type != "cpu" or flags is None:
        return None
    amx = "amx_bf16" in flags
    bf16 = precision.startswith(("bf16", "16"))
    if amx and not bf16:
        return (
            f"this CPU has AMX: trainer.precision=bf16-mixed trained lite0 at 128 px 1.15x faster than {precision} "
            "(level at 96 px; BENCHMARKS.md, 'bf16 on a CPU with AMX')"
        )
    if bf16 and not amx:
        return f"trainer.precision={precision} on a CPU without AMX: slower than 32-true here (BENCHMARKS.md)"
    return None
