"""Shared fixtures: composed configs (as the CLI composes them) and small image files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from bloodcells.config import CONFIG_DIR, PROJECT_ROOT

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an attempted download fails at once, not after retries

SAMPLE_DIR = PROJECT_ROOT / "data" / "sample"


def compose_config(config_name: str, overrides: list[str], run_dir: Path) -> DictConfig:
    """Compose like ``python -m bloodcells.<entry>``, with the run dir under ``run_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.log_dir = str(run_dir)
        del cfg.hydra
    return cfg


FAST_TRAIN = [
    "model=tiny",
    "data.num_workers=0",
    "trainer.enable_progress_bar=false",
    "logger=csv",
]


@pytest.fixture
def train_cfg(tmp_path: Path):
    def make(*overrides: str) -> DictConfig:
        return compose_config("train", [*FAST_TRAIN, *overrides], tmp_path)

    return make


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def make_images(rng):
    def make(n: int, size: int = 32, channels: int | None = 3) -> np.ndarray:
        shape = (n, size, size) if channels is None else (n, size, size, channels)
        return rng.integers(0, 256, shape, dtype=np.uint8)

    return make
