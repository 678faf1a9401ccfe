"""Shared fixtures: composed configs (as the CLI composes them) and small image files; the
shared helper functions live in ``tests/helpers``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from bloodcells.core.hydra import compose_config
from tests.helpers import FAST_TRAIN

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an attempted download fails at once, not after retries
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: no thread oversubscription
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the CLIs the tests start inherit it
    torch.set_num_threads(1)


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
