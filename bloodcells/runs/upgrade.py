"""``python -m bloodcells.checkpoints upgrade``: old checkpoints to today's plain format."""

from __future__ import annotations

from pathlib import Path

import torch

from bloodcells.callbacks.rng_state import numpy_state_to_plain
from bloodcells.core.errors import CheckpointError
from bloodcells.inference.checkpoints import atomic_save, check_path, safe_load
from bloodcells.models.hparams import migrate_hparams
from bloodcells.models.module import to_plain


def upgrade(path: Path) -> None:
    """Convert an old checkpoint (omegaconf hyperparameters, Hydra targets) to plain values, in place.

    The file is unpickled without torch's restrictions: only for a file the user trusts.
    """
    path = check_path(path, "upgrade FILE")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # the user vouched for it
    except Exception as err:  # noqa: BLE001 - any damage ends in one line
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or not a torch file ({first})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("hyper_parameters"), dict):
        raise CheckpointError(f"{path}: not a bloodcells checkpoint (no hyper_parameters)")
    hparams = {k: to_plain(v) for k, v in checkpoint["hyper_parameters"].items()}
    hparams.pop("_instantiator", None)
    checkpoint["hyper_parameters"] = migrate_hparams(hparams, str(path))
    states = checkpoint.get("rng_states")
    if states and not isinstance(states.get("numpy"), dict):
        states["numpy"] = numpy_state_to_plain(states["numpy"])
    atomic_save(checkpoint, path)
    safe_load(path)
