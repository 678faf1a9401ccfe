"""A grid of augmented training images: ``python -m bloodcells.preview aug=mixed``.

What it does lives in ``bloodcells.runs.preview``; this module is the command line."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from bloodcells.core.cli import user_errors
from bloodcells.core.hydra import CONFIG_DIR
from bloodcells.runs.preview import preview


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="preview")
def main(cfg: DictConfig) -> None:
    with user_errors():
        preview(cfg)


if __name__ == "__main__":
    main()
