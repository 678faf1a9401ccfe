"""The one wrapper every command runs in: a user's mistake ends the run with one line and
exit 2 (a stop from outside with 143), never a stack trace; in a multirun a failing job is
recorded in its dir and the sweep goes on."""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bloodcells.core.errors import Pruned, Stopped, UserError
from bloodcells.core.hydra import in_multirun

WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
"""Disk full, quota, read-only or forbidden: the user's to fix, said in one line."""


class DropLightningTips(logging.Filter):
    """Lightning's advertising tip (litlogger) is not for our users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_third_party() -> None:
    """Silence known noise that is not the user's business (called by the entry points)."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(DropLightningTips())
    for exporter in ("onnx_ir", "onnxscript"):  # ~180 lines of graph-pass chatter per ONNX export
        logging.getLogger(exporter).setLevel(logging.ERROR)  # (the backends' parity is tested instead)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad input from the user ends the run with its one-line message, not a stack trace.

    In a multirun, a failing job (any error) is recorded in its dir and the sweep goes on.
    """
    from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

    quiet_third_party()
    try:
        yield
    except Exception as err:
        if isinstance(err, Pruned):
            print(f"bloodcells: {err}", file=sys.stderr)
            return
        if in_multirun() and not isinstance(err, Stopped):
            record_failed_job(err)  # summarize lists this job as failed
            return
        if isinstance(err, (MissingMandatoryValue, InterpolationToMissingValueError)):
            named = re.search(r"Missing mandatory value: ([\w.]+)", str(err))
            key = named.group(1) if named else (err.full_key or "a mandatory option")
            print(f"bloodcells: error: {key} is required: pass {key}=... on the command line", file=sys.stderr)
            raise SystemExit(2) from None
        if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
            where = err.filename or "a file"
            print(f"bloodcells: error: cannot write {where}: {os.strerror(err.errno)}", file=sys.stderr)
            raise SystemExit(2) from None
        if not isinstance(err, (UserError, FileNotFoundError)):
            raise
        print(f"bloodcells: error: {err}", file=sys.stderr)
        raise SystemExit(getattr(err, "exit_code", 2)) from None


def record_failed_job(err: BaseException) -> None:
    """A multirun job's failure: one line on stderr, the traceback in the job's error.txt."""
    import traceback

    from hydra.core.hydra_config import HydraConfig

    out = Path(HydraConfig.get().runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = root_cause(err)
    text = "".join(traceback.format_exception(err)) + f"root cause: {type(root).__name__}: {root}\n"
    (out / "error.txt").write_text(text)  # the last line is what the sweep summary shows
    also = f" (then {type(err).__name__}: {err})" if root is not err else ""
    print(f"bloodcells: error: job {out.name} failed: {type(root).__name__}: {root}{also}", file=sys.stderr)


def root_cause(err: BaseException) -> BaseException:
    """The first exception of a chain: a failure during teardown (Lightning's, after a
    loader failed) is reported after the error that started it."""
    while True:
        nxt = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
        if nxt is None:
            return err
        err = nxt
