"""Every use of another library's private API, fenced in one place.

Each function wraps one thing that a library does not promise to keep (an underscored name,
an internal module, a message text). When a release changes it, the function raises
``PrivateAPIChanged`` naming the library, its installed version and what changed, and
``tests/core/test_compat.py`` exercises each one, so an upgrade fails there, in words, and not
deep inside a training run.
"""

from __future__ import annotations

import importlib.metadata
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


class PrivateAPIChanged(RuntimeError):
    """A library changed something private that bloodcells relies on."""


def changed(library: str, what: str, err: BaseException | str) -> PrivateAPIChanged:
    try:
        version = importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        version = "(not installed)"
    return PrivateAPIChanged(
        f"{library} {version}: {what} changed ({err}); bloodcells.compat relies on it: "
        f"install the {library} version the project's tests pass with, or update bloodcells/compat.py"
    )


# --- optuna: a job's trial rebuilt from the storage ---------------------------------------


def rebuild_optuna_trial(study: Any, frozen: Any) -> Any:
    """A live ``optuna.trial.Trial`` for a trial created by another process (the sweeper):
    Optuna has no public way to re-attach to it, so it is built from its private id."""
    import optuna

    try:
        return optuna.trial.Trial(study, frozen._trial_id)
    except (AttributeError, TypeError) as err:
        raise changed("optuna", "Trial(study, frozen._trial_id)", err) from None


# --- hydra: a job's return value, the config of a composed run, override parsing ---------


def job_return_value(job_return: Any) -> Any:
    """What a Hydra job returned, or the exception it raised (``JobReturn.return_value``
    re-raises a failure; the stored value is private)."""
    try:
        return job_return._return_value
    except AttributeError as err:
        raise changed("hydra-core", "JobReturn._return_value", err) from None


def set_hydra_config(cfg: Any) -> None:
    """Make ``HydraConfig.get()`` answer for a config composed outside ``@hydra.main``."""
    from hydra.core.hydra_config import HydraConfig

    try:
        HydraConfig().set_config(cfg)
    except AttributeError as err:
        raise changed("hydra-core", "HydraConfig.set_config", err) from None


def parse_override(line: str) -> Any:
    """Hydra's own parse of one override line (``key=interval(a, b)``, ``choice(...)``)."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
    except ImportError as err:
        raise changed("hydra-core", "hydra.core.override_parser", err) from None
    return OverridesParser.create().parse_override(line)


def sweep_types() -> tuple[type, type, type]:
    """Hydra's ChoiceSweep, IntervalSweep and RangeSweep classes."""
    try:
        from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    except ImportError as err:
        raise changed("hydra-core", "hydra.core.override_parser.types", err) from None
    return ChoiceSweep, IntervalSweep, RangeSweep


# --- torch and lightning internals ---------------------------------------------------------


def batchnorm_base() -> type:
    """The base class of every BatchNorm layer (1d/2d/3d, SyncBatchNorm, lazy ones)."""
    try:
        return torch.nn.modules.batchnorm._BatchNorm
    except AttributeError as err:
        raise changed("torch", "torch.nn.modules.batchnorm._BatchNorm", err) from None


def set_last_lr(scheduler: torch.optim.lr_scheduler.LRScheduler, lrs: list[float]) -> None:
    """What ``get_last_lr()`` returns, for a scheduler that redoes its current LRs."""
    if not hasattr(scheduler, "_last_lr"):
        raise changed("torch", "LRScheduler._last_lr", "attribute missing")
    scheduler._last_lr = lrs


def attached_trainer(module: Any) -> Any:
    """The trainer a LightningModule is attached to, or None (``module.trainer`` raises)."""
    try:
        return module._trainer
    except AttributeError as err:
        raise changed("lightning", "LightningModule._trainer", err) from None


# --- huggingface_hub: offline mode for one call -------------------------------------------


@contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """Set huggingface_hub's offline flag for the calls inside, then put it back: offline,
    timm tries only the local cache instead of retrying the network for a minute."""
    from huggingface_hub import constants

    if not hasattr(constants, "HF_HUB_OFFLINE"):
        raise changed("huggingface_hub", "constants.HF_HUB_OFFLINE", "attribute missing")
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def hub_offline_flag() -> bool:
    from huggingface_hub import constants

    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


# --- torch's SIGCHLD handler for loader workers --------------------------------------------

SIGTERM_DEATH = "killed by signal: Terminated"
"""torch's message for a loader worker ended by SIGTERM (tested against torch itself)."""

_guard = threading.local()


def died_of_sigterm(err: BaseException) -> bool:
    """Whether ``err`` is torch reporting a loader worker ended by SIGTERM."""
    return isinstance(err, RuntimeError) and SIGTERM_DEATH in str(err)


def quiet_on_sigterm(handler: Callable) -> Callable:
    """Wrap torch's SIGCHLD handler so that a worker's death by SIGTERM does not raise
    asynchronously; any other worker death (e.g. the OOM killer's SIGKILL) still raises."""

    def on_sigchld(signum: int, frame: object) -> None:
        try:
            handler(signum, frame)
        except RuntimeError as err:
            if not died_of_sigterm(err):
                raise

    on_sigchld.wrapped = handler
    return on_sigchld


def wrap_sigchld_handler() -> None:
    """Inside ``quiet_worker_sigterm``: wrap the SIGCHLD handler that torch installs with a
    loader's first worker iterator (called right after the iterator is made)."""
    if not getattr(_guard, "active", False) or not hasattr(signal, "SIGCHLD"):
        return
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGCHLD)
    if callable(current) and not hasattr(current, "wrapped"):
        signal.signal(signal.SIGCHLD, quiet_on_sigterm(current))


@contextmanager
def quiet_worker_sigterm() -> Iterator[None]:
    """For the duration of ``fit``: loader workers killed by SIGTERM (a scheduler stopping
    the job) do not raise asynchronously. Afterwards the handler is what it would be without
    bloodcells: torch's own if it installed one meanwhile, else the one before."""
    if not hasattr(signal, "SIGCHLD") or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGCHLD)
    _guard.active = True
    try:
        yield
    finally:
        _guard.active = False
        current = signal.getsignal(signal.SIGCHLD)
        signal.signal(signal.SIGCHLD, getattr(current, "wrapped", current if current is not None else before))
