"""Checks for values read back from files a stranger may have written (checkpoints,
ensemble files): each value must be of the plain kind bloodcells writes, else one
``CheckpointError`` naming it. Nothing read here is imported, built or called.
"""

from __future__ import annotations

import inspect
import math

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
    if not isinstance(split, dict) or set(split) - set(SPLIT_TYPES) or not set(SPLIT_TYPES) - {"digests"} <= set(split):
        raise CheckpointError(f"{where}: refused, split definition {split!r} is not what bloodcells writes")
    for key, check in SPLIT_TYPES.items():
        if key in split and not check(split[key]):
            raise CheckpointError(f"{where}: refused, split definition {key}={split[key]!r}")
    allowed = set(inspect.signature(clean_dataset).parameters) - {"images", "labels", "class_names"}
    for key, value in split["clean_options"].items():
        if key not in allowed or not isinstance(value, (str, int, float, bool, type(None))):
            raise CheckpointError(f"{where}: refused, split definition clean_options.{key}={value!r}")
    return record
