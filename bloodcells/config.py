"""Hydra/OmegaConf glue shared by the entry points."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(PROJECT_ROOT / "conf")

if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


def compose_config(config_name: str, overrides: list[str], run_dir: Path | str) -> DictConfig:
    """Compose a config as ``python -m bloodcells.<config_name>`` would, without Hydra's
    run-dir machinery: the run writes into ``run_dir``. For tests, benches and notebooks."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.log_dir = str(run_dir)
        del cfg.hydra
    return cfg


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad input from the user ends the run with its one-line message, not a stack trace."""
    from omegaconf.errors import MissingMandatoryValue

    from bloodcells.errors import UserError

    try:
        yield
    except (UserError, FileNotFoundError) as err:
        print(f"bloodcells: error: {err}", file=sys.stderr)
        raise SystemExit(getattr(err, "exit_code", 2)) from None
    except MissingMandatoryValue as err:
        key = err.full_key or "a mandatory option"
        print(f"bloodcells: error: {key} is required: pass {key}=... on the command line", file=sys.stderr)
        raise SystemExit(2) from None
