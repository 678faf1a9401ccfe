"""Helpers shared by the bench scripts: compose the train config like the CLI does."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bloodcells.config import CONFIG_DIR  # noqa: E402


def compose_train(overrides: list[str], run_dir: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.log_dir = str(run_dir)
        del cfg.hydra
    return cfg


def emit(result: dict) -> None:
    """The last line of every bench script: its figures as one JSON object."""
    print(json.dumps(result))
