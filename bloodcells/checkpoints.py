"""Load checkpoints safely: ``weights_only=True`` always, one-line errors for bad files.

A checkpoint is a pickle; unpickling an untrusted one with ``weights_only=False`` can run
arbitrary code. bloodcells checkpoints hold only tensors and plain containers, so they load
with torch's restricted unpickler; anything else is refused with a message that says why.
Checkpoints written before hyperparameters were saved as plain containers can be converted
once, by a user who trusts them: ``python -m bloodcells.checkpoints upgrade FILE``.
"""

from __future__ import annotations

import argparse
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from bloodcells.errors import CheckpointError, ConfigError
from bloodcells.files import replace_atomically
from bloodcells.models.module import CellClassifier, to_plain

UPGRADE_HINT = "python -m bloodcells.checkpoints upgrade {path}"


def check_path(ckpt_path: object, option: str = "ckpt_path") -> Path:
    if ckpt_path is None or str(ckpt_path).strip() == "":
        raise ConfigError(f"{option} is empty: pass {option}=/path/to/file.ckpt")
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found ({option})")
    return path


def safe_load(ckpt_path: object, option: str = "ckpt_path") -> dict[str, Any]:
    """The checkpoint dict, unpickled with ``weights_only=True`` and checked to be ours."""
    path = check_path(ckpt_path, option)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or not a torch file (not a zip archive)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "omegaconf" in str(err):
            raise CheckpointError(
                f"{path}: written by an older bloodcells (omegaconf objects inside); if you trust the file, "
                f"convert it once with: {UPGRADE_HINT.format(path=path)}"
            ) from None
        what = str(err).split("Unsupported global:", 1)[-1].split(" was not")[0].strip() or "arbitrary objects"
        raise CheckpointError(
            f"{path}: refused, the file holds objects other than tensors and plain data ({what}); "
            "a checkpoint could run code when unpickled, so only bloodcells checkpoints are loaded"
        ) from None
    except Exception as err:  # a damaged archive fails in many ways inside torch.load
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or not a torch file ({first})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        keys = sorted(checkpoint)[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict'; found {keys})")
    if "backbone" not in checkpoint.get("hyper_parameters", {}):
        raise CheckpointError(f"{path}: not a bloodcells checkpoint (its hyperparameters name no backbone)")
    return checkpoint


def load_classifier(ckpt_path: object, map_location: str | torch.device = "cpu") -> CellClassifier:
    """Rebuild a trained classifier from its checkpoint alone (no download, no data)."""
    checkpoint = safe_load(ckpt_path)
    hparams = {**checkpoint["hyper_parameters"], "pretrained": False}
    model = CellClassifier(**hparams)
    missing, unexpected = model.load_state_dict(checkpoint["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt_path}: weights do not fit backbone {hparams['backbone']!r} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.on_load_checkpoint(checkpoint)
    return model.to(map_location).eval()


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save without ever leaving a half-written checkpoint."""
    replace_atomically(path, lambda tmp: torch.save(obj, tmp))


def write_calibration(ckpt_path: str | Path, calibration: dict) -> None:
    """Store fitted temperatures (per TTA key) inside the checkpoint, where predict finds them."""
    checkpoint = safe_load(ckpt_path)
    checkpoint["calibration"] = calibration
    atomic_save(checkpoint, Path(ckpt_path))


def upgrade(path: Path) -> None:
    """Convert an old checkpoint (omegaconf hyperparameters) to plain containers, in place."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # the user vouched for it
    checkpoint["hyper_parameters"] = {k: to_plain(v) for k, v in checkpoint.get("hyper_parameters", {}).items()}
    checkpoint["hyper_parameters"].pop("_instantiator", None)
    states = checkpoint.get("rng_states")
    if states and not isinstance(states.get("numpy"), dict):
        from bloodcells.callbacks.rng_state import numpy_state_to_plain

        states["numpy"] = numpy_state_to_plain(states["numpy"])
    atomic_save(checkpoint, path)
    safe_load(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bloodcells.checkpoints")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help="convert an old checkpoint you trust to the safe format (in place)")
    up.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for f in args.files:
        upgrade(f)
        print(f"{f}: upgraded; it now loads with weights_only=True")


if __name__ == "__main__":
    main()
