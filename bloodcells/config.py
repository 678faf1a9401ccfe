"""Hydra/OmegaConf glue shared by the entry points."""

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
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from bloodcells.compat import set_hydra_config
from bloodcells.errors import Pruned, Stopped, UserError

WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
"""Disk full, quota, read-only or forbidden: the user's to fix, said in one line."""

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(PROJECT_ROOT / "conf")

if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


def compose_config(config_name: str, overrides: list[str], run_dir: Path | str) -> DictConfig:
    """Compose a config as ``python -m bloodcells.<config_name>`` would, without Hydra's
    run-dir machinery: the run writes into ``run_dir``. For tests, benches and notebooks."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    set_hydra_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.log_dir = str(run_dir)
        del cfg.hydra
    return cfg


def user_error_in(err: BaseException) -> UserError | None:
    """The ``UserError`` that Hydra wrapped into an ``InstantiationException``, if any."""
    while err is not None:
        if isinstance(err, UserError):
            return err
        err = err.__cause__ or err.__context__
    return None


def instantiate(config: Any, *args, **kwargs) -> Any:
    """``hydra.utils.instantiate`` that lets our one-line errors through unwrapped."""
    try:
        return hydra_instantiate(config, *args, **kwargs)
    except InstantiationException as err:
        cause = user_error_in(err)
        if cause is None:
            raise
        raise cause from None


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


class DropLightningTips(logging.Filter):
    """Lightning's advertising tip (litlogger) is not for our users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_third_party() -> None:
    """Silence known noise that is not the user's business (called by the entry points)."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(DropLightningTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


def require_values(node: DictConfig) -> None:
    """Raise ``ConfigError`` naming the first ``???`` option under ``node`` (e.g. data.reader.path)."""
    from bloodcells.errors import ConfigError

    missing = sorted(OmegaConf.missing_keys(node))  # full keys from the config root
    if missing:
        key = missing[0]
        raise ConfigError(f"{key} is required: pass {key}=... on the command line")


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
