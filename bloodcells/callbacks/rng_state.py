"""Save and restore the global RNG states with each checkpoint.

Lightning does not checkpoint them, so dropout masks and the like drift apart after a
resume; with this callback a run resumed from ``last.ckpt`` continues exactly like an
uninterrupted one (data order and augmentation are already epoch-seeded). States are stored
as tensors and plain values so that the checkpoint loads with ``weights_only=True``.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch


def numpy_state_to_plain(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def numpy_state_from_plain(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]


def python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def python_state_from_plain(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss


class RNGStateCheckpoint(pl.Callback):
    def on_save_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": numpy_state_to_plain(np.random.get_state()),
            "python": python_state_to_plain(random.getstate()),
        }

    def on_load_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if states is None:
            return
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
        np.random.set_state(numpy_state_from_plain(states["numpy"]))
        random.setstate(python_state_from_plain(states["python"]))
