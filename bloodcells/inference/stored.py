"""Checks for values read back from files a stranger may have written (checkpoints,
ensemble files): each value must be of the plain kind bloodcells writes, else one
``CheckpointError`` naming it. Nothing read here is imported, built or called.
"""

from __future__ import annotations

import inspect
import math

import torch

from bloodcells.core.errors import CheckpointError, UserError
from bloodcells.inference.tta import NO_TTA, TTA


def is_number(value: object) -> bool:
    """A finite int or float (JSON's NaN and Infinity are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def tta_from_dict(spec: object, where: str) -> TTA:
    """The TTA a file stores: only ``views``, ``brightness`` and ``merge``, checked by ``TTA``."""
    if spec is None:
        return NO_TTA
    if not isinstance(spec, dict) or not set(spec) <= {"views", "brightness", "merge"}:
        raise CheckpointError(f"{where}: bad TTA entry {spec!r} (expected views, brightness, merge)")
    brightness = spec.get("brightness", [])
    if not isinstance(brightness, list) or not all(is_number(b) and b > 0 for b in brightness):
        raise CheckpointError(f"{where}: bad TTA entry {spec!r} (brightness: a list of positive numbers)")
    try:
        return TTA(**spec)
    except (TypeError, UserError) as err:
        raise CheckpointError(f"{where}: bad TTA entry {spec!r} ({err})") from None


def check_calibration(calibration: object, where: str) -> dict:
    """A checkpoint's stored calibration: a TTA and finite positive temperatures per TTA key."""
    if calibration in (None, {}):
        return {}
    if not isinstance(calibration, dict) or not isinstance(calibration.get("temperatures", {}), dict):
        raise CheckpointError(f"{where}: refused, calibration={calibration!r} is not what bloodcells writes")
    tta_from_dict(calibration.get("tta"), where)
    for key, t in calibration.get("temperatures", {}).items():
        if not isinstance(key, str) or not is_number(t) or t <= 0:
            raise CheckpointError(f"{where}: refused, calibration temperature {key!r}: {t!r} (expected a number > 0)")
    return calibration


SPLIT_TYPES = {
    "split_seed": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "val_fraction": lambda v: is_number(v) and 0 <= v < 1,
    "test_fraction": lambda v: is_number(v) and 0 <= v < 1,
    "use_data_split": lambda v: isinstance(v, bool),
    "clean": lambda v: isinstance(v, bool),
    "clean_options": lambda v: isinstance(v, dict),
    "exclude": lambda v: isinstance(v, str),
    "digests": lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(d, str) for k, d in v.items()),
}


def check_data_record(record: object, where: str) -> dict:
    """The datamodule's record in a checkpoint: text source fields and a split definition
    whose cleaning options are arguments of ``clean_dataset`` with plain values."""
    from bloodcells.cleaning.pipeline import clean_dataset  # imported here: dedup needs numpy/scipy only

    if record is None:
        return {}
    if not isinstance(record, dict) or not isinstance(record.get("source", {}), dict):
        raise CheckpointError(f"{where}: refused, the data record {record!r} is not what bloodcells writes")
    for key, value in record.get("source", {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise CheckpointError(f"{where}: refused, data source {key!r}={value!r} (expected text)")
    split = record.get("split")
    if split is None:
        return record
    if (
        not isinstance(split, dict)
        or set(split) - set(SPLIT_TYPES)
        or not set(SPLIT_TYPES) - {"digests", "exclude"} <= set(split)
    ):
        raise CheckpointError(f"{where}: refused, split definition {split!r} is not what bloodcells writes")
    for key, check in SPLIT_TYPES.items():
        if key in split and not check(split[key]):
            raise CheckpointError(f"{where}: refused, split definition {key}={split[key]!r}")
    allowed = set(inspect.signature(clean_dataset).parameters) - {"images", "labels", "class_names"}
    for key, value in split["clean_options"].items():
        if key not in allowed or not isinstance(value, (str, int, float, bool, type(None))):
            raise CheckpointError(f"{where}: refused, split definition clean_options.{key}={value!r}")
    return record


OOD_ARRAYS = {"mahalanobis": {"projection", "centres"}, "knn": {"bank"}, "msp": set()}
PIXEL_ARRAYS = {"pixel_centre", "pixel_projection", "scales"}
N_STATISTICS = 10


def check_ood(state: object, where: str, n_features: int, n_classes: int) -> dict | None:
    """A stored foreign-image score: a known method, a positive threshold and finite arrays of
    the shapes that method uses with this backbone (D features, K classes)."""
    if state is None:
        return None
    if not isinstance(state, dict) or set(state) != {"method", "threshold", "k", "pixels", "arrays"}:
        raise CheckpointError(f"{where}: refused, the foreign-image score {state!r:.80} is not what bloodcells writes")
    method, arrays = state["method"], state["arrays"]
    if not isinstance(state["pixels"], bool):
        raise CheckpointError(f"{where}: refused, foreign-image pixels={state['pixels']!r} (expected true or false)")
    expected_arrays = OOD_ARRAYS.get(method, set()) | (PIXEL_ARRAYS if state["pixels"] else set())
    if method not in OOD_ARRAYS or not isinstance(arrays, dict) or set(arrays) != expected_arrays:
        raise CheckpointError(f"{where}: refused, foreign-image score method {method!r} with arrays {list(arrays)}")
    if not is_number(state["threshold"]) or state["threshold"] <= 0:
        raise CheckpointError(f"{where}: refused, foreign-image threshold {state['threshold']!r} (expected > 0)")
    if not isinstance(state["k"], int) or state["k"] < 1:
        raise CheckpointError(f"{where}: refused, foreign-image k={state['k']!r} (expected an integer >= 1)")
    shapes = {
        "centres": (n_classes, n_features),
        "projection": (n_features, n_features),
        "bank": (None, n_features),
        "pixel_centre": (1, N_STATISTICS),
        "pixel_projection": (N_STATISTICS, N_STATISTICS),
        "scales": (1, 2),
    }
    for name, value in arrays.items():
        expected = shapes[name]
        ok = isinstance(value, torch.Tensor) and value.dim() == 2 and value.is_floating_point()
        ok = (
            ok and all(e is None or e == s for e, s in zip(expected, value.shape)) and bool(torch.isfinite(value).all())
        )
        if not ok:
            raise CheckpointError(
                f"{where}: refused, foreign-image array {name!r} is not a finite {expected} float tensor"
            )
    return state


def check_conformal(stored: object, where: str, n_classes: int) -> dict:
    """Stored conformal calibration, per TTA key: validation probabilities (N x K, rows summing
    to 1) and their true classes (N integers below K)."""
    if stored in (None, {}):
        return {}
    if not isinstance(stored, dict):
        raise CheckpointError(f"{where}: refused, conformal calibration {stored!r:.80} is not what bloodcells writes")
    for key, entry in stored.items():
        if not isinstance(entry, dict) or set(entry) != {"probs", "targets"}:
            raise CheckpointError(f"{where}: refused, conformal calibration {key!r} is not {{probs, targets}}")
        probs, targets = (torch.as_tensor(entry[k]) for k in ("probs", "targets"))
        ok = probs.dim() == 2 and probs.shape[1] == n_classes and targets.shape == probs.shape[:1]
        ok = ok and probs.is_floating_point() and bool(torch.isfinite(probs).all()) and not targets.is_floating_point()
        ok = ok and bool(((probs >= 0) & (probs <= 1)).all()) and bool(((targets >= 0) & (targets < n_classes)).all())
        if not ok:
            raise CheckpointError(
                f"{where}: refused, conformal calibration {key!r}: expected N x {n_classes} probabilities "
                f"and N class indices below {n_classes}"
            )
    return stored
