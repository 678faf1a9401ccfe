"""Hydra and OmegaConf glue: compose a config as the CLI does, instantiate with our one-line
errors let through, name the first missing option."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from bloodcells.core.compat import set_hydra_config
from bloodcells.core.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
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


def require_values(node: DictConfig) -> None:
    """Raise ``ConfigError`` naming the first ``???`` option under ``node`` (e.g. data.reader.path)."""
    from bloodcells.core.errors import ConfigError

    missing = sorted(OmegaConf.missing_keys(node))  # full keys from the config root
    if missing:
        key = missing[0]
        raise ConfigError(f"{key} is required: pass {key}=... on the command line")
