"""Find duplicates, pollution and outliers: ``python -m bloodcells.clean data=... [audit=test_set.npz]``.

What it does lives in ``bloodcells.runs.clean``; this module is the command line."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from bloodcells.core.cli import user_errors
from bloodcells.core.hydra import CONFIG_DIR
from bloodcells.runs.clean import clean


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="clean")
def main(cfg: DictConfig) -> None:
    with user_errors():
        clean(cfg)


if __name__ == "__main__":
    main()
