"""Helpers shared by the bench scripts: compose the train config like the CLI does."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bloodcells.config import compose_config  # noqa: E402


def compose_train(overrides: list[str], run_dir: Path) -> DictConfig:
    return compose_config("train", overrides, run_dir)


def emit(result: dict) -> None:
    """The last line of every bench script: its figures as one JSON object."""
    print(json.dumps(result))
