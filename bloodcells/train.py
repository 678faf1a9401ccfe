"""Train, then test the best checkpoint: ``python -m bloodcells.train model=... data=...``.

What it does lives in ``bloodcells.runs.train``; this module is the command line."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from bloodcells.core.cli import user_errors
from bloodcells.core.hydra import CONFIG_DIR
from bloodcells.runs.train import train


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns the monitored validation score of the best checkpoint: what sweepers
    optimise (never a test metric, which would leak the test split into the choice)."""
    metrics: dict = {}
    with user_errors():
        metrics = train(cfg)
    return metrics.get("best_val_score")


if __name__ == "__main__":
    main()
