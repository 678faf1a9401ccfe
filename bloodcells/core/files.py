"""Files that are never seen half-written (checkpoints, the cleaning cache), and run dirs
that one training owns at a time."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bloodcells.core.errors import ConfigError


def replace_atomically(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to a temp file beside ``path``, then rename it over ``path``: a crash
    leaves the old file or none, never a truncated one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


@contextmanager
def owned_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold the run dir for one training: a second one started into the same dir (a reused
    ``hydra.run.dir``, a sweep re-run while the first still runs) is refused instead of mixing
    checkpoints and results. An OS lock, so a killed run never leaves a stale one. Only the
    job's first process locks; DDP's other ranks share the dir by design."""
    if any(os.environ.get(v, "0") != "0" for v in RANK_VARIABLES):
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".train.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"{run_dir}: another training is writing into this run dir; give each run its own (hydra.run.dir)"
            ) from None
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield
