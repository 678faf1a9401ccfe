"""Ensemble checkpoints (or a sweep's best): ``python -m bloodcells.ensemble members=[a.ckpt,b.ckpt]``.

What it does lives in ``bloodcells.runs.ensemble``; this module is the command line."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from bloodcells.core.cli import user_errors
from bloodcells.core.hydra import CONFIG_DIR
from bloodcells.runs.ensemble import ensemble


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="ensemble")
def main(cfg: DictConfig) -> None:
    with user_errors():
        ensemble(cfg)


if __name__ == "__main__":
    main()
