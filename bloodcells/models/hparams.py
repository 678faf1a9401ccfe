"""What a checkpoint stores about its model: plain values checked against a fixed schema.

A checkpoint is data shared between strangers, so nothing in it may name code. The loss
and optimizer travel as a name from a fixed set (``LOSSES``, ``OPTIMIZERS``) plus numbers;
the scheduler, head and fine-tuning stages as numbers, strings and lists. ``check_hparams``
refuses any key or value outside the schema with one line naming the key and the value,
before anything is built. Checkpoints written before this schema stored Hydra ``_target_``
paths; ``migrate_hparams`` accepts exactly the ones the project itself wrote.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from timm.optim import Lion

from bloodcells.core.errors import CheckpointError, ConfigError, UserError

LOSSES = ("focal",)
"""Loss names; ``bloodcells.models.losses.build_loss`` maps them to classes."""

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "lion": Lion,
    "sgd": torch.optim.SGD,
}

LEGACY_OPTIMIZER_PATHS = {
    "torch.optim.Adam": "adam",
    "torch.optim.AdamW": "adamw",
    "timm.optim.Lion": "lion",
    "torch.optim.SGD": "sgd",
}
"""The optimizer class paths that bloodcells configs wrote into checkpoints before names."""
LEGACY_LOSS_TARGET = "bloodcells.models.losses.FocalLoss"
LEGACY_OPTIM_TARGET = "bloodcells.models.optimizers.make_optimizer"

Check = Callable[[Any], bool]


def _number(lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False) -> Check:
    def check(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    return check


def _integer(lo: int = 0, hi: int = 1_000_000) -> Check:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _one_of(*allowed: Any) -> Check:
    return lambda v: isinstance(v, (str, type(None))) and v in allowed


def _boolean(v: Any) -> bool:
    return isinstance(v, bool)


def _optional(check: Check) -> Check:
    return lambda v: v is None or check(v)


def _list_of(check: Check, min_len: int = 0) -> Check:
    return lambda v: isinstance(v, (list, tuple)) and len(v) >= min_len and all(check(x) for x in v)


def _text(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 500


FRACTION = _number(0, 1, hi_open=True)
NON_NEGATIVE = _number(0)

HEAD = {
    "hidden": (_list_of(_integer(1, 65536)), "a list of positive widths"),
    "dropout": (FRACTION, "a number in [0, 1)"),
    "input_dropout": (FRACTION, "a number in [0, 1)"),
    "input_batchnorm": (_boolean, "true or false"),
}
LOSS = {
    "name": (_one_of(*LOSSES), f"one of {', '.join(LOSSES)}"),
    "gamma": (NON_NEGATIVE, "a number >= 0"),
    "label_smoothing": (FRACTION, "a number in [0, 1)"),
    "class_weights": (
        lambda v: _one_of(None, "none", "balanced", "effective")(v) or _list_of(_number(0, lo_open=True), 1)(v),
        "null, none, balanced, effective or a list of positive weights",
    ),
}
_OPTIM_COMMON = {
    "name": (_one_of(*OPTIMIZERS), f"one of {', '.join(OPTIMIZERS)}"),
    "lr": (_number(0, 10), "a number in [0, 10]"),
    "weight_decay": (_number(0, 10), "a number in [0, 10]"),
    "head_weight_decay": (_optional(_number(0, 10)), "null or a number in [0, 10]"),
}
_BETAS = (_list_of(FRACTION, 2), "two numbers in [0, 1)")
OPTIM_BY_NAME = {
    "adam": {**_OPTIM_COMMON, "betas": _BETAS, "eps": (_number(0, 1, lo_open=True), "a number in (0, 1]")},
    "adamw": {**_OPTIM_COMMON, "betas": _BETAS, "eps": (_number(0, 1, lo_open=True), "a number in (0, 1]")},
    "lion": {**_OPTIM_COMMON, "betas": _BETAS},
    "sgd": {
        **_OPTIM_COMMON,
        "momentum": (FRACTION, "a number in [0, 1)"),
        "nesterov": (_boolean, "true or false"),
        "dampening": (FRACTION, "a number in [0, 1)"),
    },
}
SCHED = {
    "decay": (_one_of("cosine", "plateau", "constant"), "cosine, plateau or constant"),
    "interval": (_one_of("step", "epoch"), "step or epoch"),
    "warmup_epochs": (_number(0, 10_000), "a number of epochs >= 0"),
    "min_factor": (_number(0, 1), "a number in [0, 1]"),
    "monitor": (lambda v: isinstance(v, str) and v.replace("/", "").replace("_", "").isalnum(), "a metric name"),
    "plateau_mode": (_one_of("min", "max"), "min or max"),
    "plateau_factor": (_number(0, 1, lo_open=True, hi_open=True), "a number in (0, 1)"),
    "plateau_patience": (_integer(0, 10_000), "an integer >= 0"),
}
STAGE = {
    "epoch": (_integer(0, 100_000), "an integer >= 0"),
    "unfreeze": (
        lambda v: v == "all" or _integer(0, 100_000)(v) or _number(0, 1)(v) and isinstance(v, float),
        "an int, a fraction in [0, 1] or 'all'",
    ),
    "lr_factor": (_number(0, 100), "a number in [0, 100]"),
}
MIX = {
    "mixup_alpha": (NON_NEGATIVE, "a number >= 0 (0: off)"),
    "cutmix_alpha": (NON_NEGATIVE, "a number >= 0 (0: off)"),
    "prob": (_number(0, 1), "a number in [0, 1]"),
    "switch_prob": (_number(0, 1), "a number in [0, 1]"),
}
FINETUNE = {
    "freeze_bn": (_boolean, "true or false"),
    "stages": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0, "a non-empty list of stages"),
}
MODEL = {
    "backbone": (_text, "a timm model name"),
    "class_names": (
        lambda v: _list_of(_text, 2)(v) and len(set(v)) == len(v),
        "a list of at least 2 distinct class names",
    ),
    "image_size": (_integer(8, 4096), "an integer in [8, 4096]"),
    "pretrained": (_boolean, "true or false"),
    "weights": (_optional(_text), "null or a text"),
    "drop_rate": (FRACTION, "a number in [0, 1)"),
    "drop_path_rate": (FRACTION, "a number in [0, 1)"),
    "channels_last": (_boolean, "true or false"),
    "stain_norm": (_one_of("none", "reinhard", "macenko"), "none, reinhard or macenko"),
    "compile": (lambda v: isinstance(v, bool) or v == "auto", "true, false or auto"),
}
GROUPS = ("head", "optim", "sched", "loss", "finetune")
OPTIONAL_GROUPS = ("mix",)
"""Groups that checkpoints written before them lack (absent: the module's default)."""
REQUIRED = {
    "": ("backbone", "class_names", "image_size", *GROUPS),
    "loss": ("name",),
    "optim": ("name", "lr"),
    "sched": ("decay",),
    "finetune": ("stages",),
    "stage": ("epoch",),
}


def _check_group(values: Any, schema: Mapping[str, tuple[Check, str]], where: str, error: type[UserError]) -> dict:
    if not isinstance(values, Mapping):
        raise error(f"{where or 'hyperparameters'}: expected a mapping, got {type(values).__name__}")
    prefix = f"{where}." if where else ""
    for key, value in values.items():
        if key not in schema:
            known = ", ".join(schema)
            raise error(f"{prefix}{key}={value!r}: unknown key (known: {known})")
        check, expects = schema[key]
        if not check(value):
            raise error(f"{prefix}{key}={value!r}: not allowed, expected {expects}")
    for key in REQUIRED.get(where.split(".")[-1].split("[")[0], ()):
        if key not in values:
            raise error(f"{prefix}{key}: missing")
    return dict(values)


def check_hparams(hparams: Any, error: type[UserError] = ConfigError) -> dict:
    """``hparams`` as a plain dict if every key and value is in the schema, else ``error``
    naming the first offending key and value. Nothing is imported or built here."""
    groups = {g: ((lambda v: True), "") for g in (*GROUPS, *OPTIONAL_GROUPS)}
    top = _check_group(hparams, {**MODEL, **groups}, "", error)
    _check_group(top["head"], HEAD, "head", error)
    _check_group(top["loss"], LOSS, "loss", error)
    optim = top["optim"]
    name = optim.get("name") if isinstance(optim, Mapping) else None
    _check_group(optim, OPTIM_BY_NAME.get(name, _OPTIM_COMMON), "optim", error)
    sched = _check_group(top["sched"], SCHED, "sched", error)
    if sched.get("decay") == "plateau" and sched.get("interval", "epoch") == "step":
        raise error("sched.interval='step': plateau decay steps once per epoch, expected epoch")
    if top.get("mix") is not None:
        _check_group(top["mix"], MIX, "mix", error)
    finetune = _check_group(top["finetune"], FINETUNE, "finetune", error)
    for i, stage in enumerate(finetune["stages"]):
        _check_group(stage, STAGE, f"finetune.stages[{i}]", error)
    return top


def migrate_hparams(hparams: Any, where: str) -> dict:
    """Hyperparameters read from a checkpoint, in today's form, checked.

    Checkpoints of earlier versions name the loss and optimizer by the Hydra ``_target_``
    that the project's own configs wrote; exactly those are translated to names. Any other
    ``_target_`` (or any other bad key or value) raises ``CheckpointError`` naming it.
    """
    if not isinstance(hparams, Mapping):
        raise CheckpointError(f"{where}: hyper_parameters is a {type(hparams).__name__}, not a mapping")
    migrated = dict(hparams)
    if isinstance(migrated.get("loss"), Mapping) and "_target_" in migrated["loss"]:
        migrated["loss"] = _migrate_loss(dict(migrated["loss"]), where)
    if isinstance(migrated.get("optim"), Mapping) and "_target_" in migrated["optim"]:
        migrated["optim"] = _migrate_optim(dict(migrated["optim"]), where)
    try:
        return check_hparams(migrated, CheckpointError)
    except CheckpointError as err:
        raise CheckpointError(f"{where}: refused, hyper_parameters.{err}") from None


def _refuse(where: str, key: str, value: Any) -> CheckpointError:
    return CheckpointError(
        f"{where}: refused, hyper_parameters.{key}={value!r} is not a value bloodcells writes "
        "(a checkpoint may not name code)"
    )


def _migrate_loss(loss: dict, where: str) -> dict:
    target = loss.pop("_target_")
    if target != LEGACY_LOSS_TARGET:
        raise _refuse(where, "loss._target_", target)
    return {"name": "focal", **loss}


def _migrate_optim(optim: dict, where: str) -> dict:
    target = optim.pop("_target_")
    partial = optim.pop("_partial_", None)
    if partial is not True:
        raise _refuse(where, "optim._partial_", partial)
    if target == LEGACY_OPTIM_TARGET:
        path = optim.pop("optimizer", None)
        if path not in LEGACY_OPTIMIZER_PATHS:
            raise _refuse(where, "optim.optimizer", path)
        return {"name": LEGACY_OPTIMIZER_PATHS[path], **optim}
    if target in LEGACY_OPTIMIZER_PATHS:  # the first configs named the optimizer class itself
        return {"name": LEGACY_OPTIMIZER_PATHS[target], **optim}
    raise _refuse(where, "optim._target_", target)
