"""Helpers shared by the bench scripts: compose the train config like the CLI does."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bloodcells.core.hydra import compose_config  # noqa: E402


def compose_train(overrides: list[str], run_dir: Path) -> DictConfig:
    return compose_config("train", overrides, run_dir)


def emit(result: dict) -> None:
    """The last line of every bench script: its figures as one JSON object."""
    print(json.dumps(result))


def pbc96_cache(root: Path | None = None) -> Path:
    """pbc96 (../shared/data/pbc96/train) as one npz, decoded once and reused by every bench."""
    import tempfile

    import numpy as np

    from bloodcells.data.readers import read_folder

    cache = Path(tempfile.gettempdir()) / "pbc96_bench.npz"
    if not cache.is_file():
        data = read_folder(root or Path(__file__).resolve().parents[2] / "shared/data/pbc96/train")
        np.savez(cache, images=data.images, labels=data.labels)
    return cache


def run_train(cache: Path, run_dir: Path, overrides: list[str]) -> tuple[str, float]:
    """``python -m bloodcells.train`` on the pbc96 cache into ``run_dir``, one run at a time
    (two trainings on 2 cores distort each other): its console output and wall seconds; a
    failed run ends the bench with its output's tail."""
    import subprocess
    import time

    command = [
        sys.executable,
        "-m",
        "bloodcells.train",
        "data=npz",
        f"data.reader.path={cache}",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    print("$ " + " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    wall = time.perf_counter() - start
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"run failed ({done.returncode}):\n{log[-3000:]}")
    return log, wall
