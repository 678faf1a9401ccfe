"""Shared fixtures: composed configs (as the CLI composes them) and small image files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf

from bloodcells.core.hydra import PROJECT_ROOT, compose_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an attempted download fails at once, not after retries

SAMPLE_DIR = PROJECT_ROOT / "data" / "sample"


__all__ = ["compose_config", "run_train_cli", "tiny_classifier", "save_checkpoint"]


def tiny_classifier(image_size: int = 96, cls: type | None = None, **overrides):
    """A random-init ``test_efficientnet`` classifier as the tiny model config builds it."""
    from bloodcells.models.module import CellClassifier

    cfg = compose_config("train", ["model=tiny", f"data.image_size={image_size}"], "/tmp/unused")
    hparams = dict(
        backbone=cfg.model.backbone,
        head=dict(cfg.model.head),
        class_names=list(cfg.class_names),
        image_size=image_size,
        optim=dict(cfg.optim),
        sched=dict(cfg.sched),
        loss=dict(cfg.loss),
        finetune=OmegaConf.to_container(cfg.finetune),
        pretrained=False,
        weights=None,
    )
    hparams.update(overrides)
    return (cls or CellClassifier)(**hparams).eval()


def save_checkpoint(model, path: Path) -> Path:
    """A checkpoint with what ``load_classifier`` reads (weights and hyperparameters)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


def run_train_cli(*overrides: str, log_dir: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m bloodcells.train`` with a tiny model, as a user runs it, outputs under ``log_dir``."""
    flags = [o for o in overrides if o.startswith("-")]  # Hydra flags (e.g. -m) go before overrides
    rest = [o for o in overrides if not o.startswith("-")]
    cmd = [sys.executable, "-m", "bloodcells.train", *flags, *FAST_TRAIN, *rest, f"paths.log_dir={log_dir}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=600)
    if check:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


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
