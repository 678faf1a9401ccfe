"""The errors a user can fix, each ending a CLI run with one line (see ``config.user_errors``).

``DataError``: bad input data (names the file and what is wrong). ``ConfigError``: a bad
option (names the option and the allowed values). ``CheckpointError``: a checkpoint or
ensemble file that cannot be used (names the file and why).
"""

from __future__ import annotations

from collections.abc import Iterable


class UserError(Exception):
    """Something the user can fix; its message is the whole story."""


class DataError(UserError, ValueError):
    """Bad input data, with a message that names the file and what is wrong."""


class ConfigError(UserError, ValueError):
    """A config option with a bad value, with a message naming the option and what it allows."""


class CheckpointError(UserError):
    """A checkpoint or ensemble file that cannot be loaded safely or does not fit the run."""


class PretrainedWeightsError(UserError, RuntimeError):
    """Pretrained weights could not be obtained; the message says how to work offline."""


class Stopped(UserError):
    """The run was stopped from outside (SIGTERM); the CLI exits 143 so a scheduler records
    a failure (or requeues), never a success."""

    exit_code = 143


class Pruned(Exception):
    """A search trial stopped by its Optuna pruner: an outcome of the search, not a failure
    (the job leaves ``pruned.json``; ``bloodcells.search`` marks the trial PRUNED)."""


def check_choice(option: str, value: object, allowed: Iterable[object]) -> None:
    """Raise ``ConfigError`` unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{option}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


def check_positive(option: str, value: object) -> None:
    """Raise ``ConfigError`` unless ``value`` is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{option}={value!r} must be a positive integer")
