"""Loader workers stopped by SIGTERM: reported where the loader is read, never asynchronously.

A scheduler (SLURM, Kubernetes) signals every process of a job, so loader workers die with
the main process. torch's SIGCHLD handler then raises "DataLoader worker ... killed by
signal: Terminated" wherever the main thread happens to be: inside a log call, a weakref
callback or Lightning's own SIGTERM handler, before it records the signal, which ends the
run with exit 1 and stray tracebacks instead of a clean stop.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from torch.utils.data import DataLoader

SIGTERM_DEATH = "killed by signal: Terminated"  # torch's message for a worker ended by SIGTERM


def died_of_sigterm(err: BaseException) -> bool:
    """Whether ``err`` is torch reporting a loader worker ended by SIGTERM."""
    return isinstance(err, RuntimeError) and SIGTERM_DEATH in str(err)


def quiet_on_sigterm(handler: Callable) -> Callable:
    """Wrap torch's SIGCHLD handler so that a worker's death by SIGTERM does not raise.

    The trainer stops on its own SIGTERM and the loader still reports the dead worker when
    next read; any other worker death (e.g. the OOM killer's SIGKILL) still raises at once.
    """

    def on_sigchld(signum: int, frame: object) -> None:
        try:
            handler(signum, frame)
        except RuntimeError as err:
            if not died_of_sigterm(err):
                raise

    on_sigchld.quiet_on_sigterm = True
    return on_sigchld


class SignalSafeLoader(DataLoader):
    """A DataLoader that wraps torch's SIGCHLD handler with ``quiet_on_sigterm``: torch
    installs that handler with the first worker iterator, so it is wrapped right after."""

    def _get_iterator(self) -> Any:
        iterator = super()._get_iterator()
        current = signal.getsignal(signal.SIGCHLD) if hasattr(signal, "SIGCHLD") else None
        if callable(current) and not getattr(current, "quiet_on_sigterm", False):
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGCHLD, quiet_on_sigterm(current))
        return iterator
