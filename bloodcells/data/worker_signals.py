"""Loader workers stopped by SIGTERM: reported where the loader is read, never asynchronously.

A scheduler (SLURM, Kubernetes) signals every process of a job, so loader workers die with
the main process. torch's SIGCHLD handler then raises "DataLoader worker ... killed by
signal: Terminated" wherever the main thread happens to be: inside a log call, a weakref
callback or Lightning's own SIGTERM handler, before it records the signal, which ends the
run with exit 1 and stray tracebacks instead of a clean stop. The handler juggling is
torch-private and lives in ``bloodcells.compat``; it is active only during ``fit``.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader

from bloodcells.core.compat import wrap_sigchld_handler


class SignalSafeLoader(DataLoader):
    """A DataLoader that, inside ``compat.quiet_worker_sigterm`` (the training's ``fit``),
    wraps torch's SIGCHLD handler right after torch installs it with the first worker iterator."""

    def __iter__(self) -> Any:
        iterator = super().__iter__()
        wrap_sigchld_handler()
        return iterator
