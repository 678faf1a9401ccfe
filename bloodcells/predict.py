"""Predict classes for images: ``python -m bloodcells.predict ckpt_path=CKPT|ENSEMBLE.json input=...``.

What it does lives in ``bloodcells.runs.predict``; this module is the command line."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from bloodcells.core.cli import user_errors
from bloodcells.core.hydra import CONFIG_DIR
from bloodcells.runs.predict import predict


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    with user_errors():
        predict(cfg)


if __name__ == "__main__":
    main()
