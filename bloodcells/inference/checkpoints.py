"""Load checkpoints safely: ``weights_only=True`` always, one-line errors for bad files.

A checkpoint is a pickle; unpickling an untrusted one with ``weights_only=False`` can run
arbitrary code. bloodcells checkpoints hold only tensors and plain containers, so they load
with torch's restricted unpickler; anything else is refused with a message that says why.
Checkpoints written before hyperparameters were saved as plain containers can be converted
once, by a user who trusts them: ``python -m bloodcells.checkpoints upgrade FILE``.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins import TorchCheckpointIO

from bloodcells.core.errors import CheckpointError, ConfigError
from bloodcells.core.files import replace_atomically
from bloodcells.data.datamodule import DATA_RECORD
from bloodcells.inference.stored import check_calibration, check_conformal, check_data_record, check_ood
from bloodcells.models.hparams import migrate_hparams
from bloodcells.models.module import CellClassifier
from bloodcells.models.ood import OODScorer

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
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict) or "backbone" not in hparams:
        raise CheckpointError(f"{path}: not a bloodcells checkpoint (its hyperparameters name no backbone)")
    checkpoint["hyper_parameters"] = migrate_hparams(hparams, str(path))
    check_callback_states(checkpoint, path)
    check_calibration(checkpoint.get("calibration"), str(path))
    check_data_record(checkpoint.get(DATA_RECORD), str(path))
    return checkpoint


def check_callback_states(checkpoint: dict, path: Path) -> None:
    """Lightning restores ModelCheckpoint's file lists on resume and later deletes the files
    that drop out of the top k. It deletes a local file only inside its own dirpath, but any
    remote URL (``s3://``, ``memory://``...): so every listed path must be a local path."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if not isinstance(state, dict) or "best_k_models" not in state:
            continue
        listed = [*(state.get("best_k_models") or {}), state.get("best_model_path"), state.get("last_model_path")]
        for file in filter(None, listed):
            if not isinstance(file, str) or "://" in file:
                raise CheckpointError(f"{path}: refused, callbacks[{key!r}] lists {file!r}, not a local file path")


def load_classifier(ckpt_path: object, map_location: str | torch.device = "cpu") -> CellClassifier:
    """Rebuild a trained classifier from its checkpoint alone (no download, no data)."""
    checkpoint = safe_load(ckpt_path)  # hyperparameters checked: plain values, no code named
    hparams = {**checkpoint["hyper_parameters"], "pretrained": False}
    model = CellClassifier(**hparams)
    state = checkpoint["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{ckpt_path}: refused, its state_dict holds values other than tensors")
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise CheckpointError(f"{ckpt_path}: weights {bad!r} hold NaN or infinite values (damaged or tampered)")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of the wrong shape
        first = str(err).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{ckpt_path}: weights do not fit backbone {hparams['backbone']!r} ({first})") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt_path}: weights do not fit backbone {hparams['backbone']!r} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.on_load_checkpoint(checkpoint)
    model.checkpoint_path = str(ckpt_path)  # where the ONNX Runtime backend caches its graph
    k, d = len(model.class_names), model.backbone.num_features
    check_conformal(model.calibration.get("conformal"), str(ckpt_path), k)
    ood = check_ood(checkpoint.get("ood"), str(ckpt_path), d, k)
    if ood is not None:
        model.ood = OODScorer(ood["method"], ood["threshold"], ood["arrays"], ood["k"], ood["pixels"])
    return model.to(map_location).eval()


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save without ever leaving a half-written checkpoint."""
    replace_atomically(path, lambda tmp: torch.save(obj, tmp))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but a full disk or a kill mid-write leaves the previous
    ``last.ckpt`` intact (temp file + rename) instead of a truncated one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_save(checkpoint, Path(path))


def write_calibration(ckpt_path: str | Path, calibration: dict, ood: OODScorer | None = None) -> None:
    """Store what was fitted after training inside the checkpoint, where predict finds it:
    temperatures and conformal calibration per TTA key, and the foreign-image score."""
    checkpoint = safe_load(ckpt_path)
    checkpoint["calibration"] = calibration
    if ood is not None:
        checkpoint["ood"] = ood.state()
    atomic_save(checkpoint, Path(ckpt_path))
