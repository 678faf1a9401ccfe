"""Evaluate a checkpoint or an ensemble file on a data split:
``python -m bloodcells.evaluate ckpt_path=... data=... [tta=dihedral] [split=test]``.

What it does lives in ``bloodcells.runs.evaluate``; this module is the command line."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from bloodcells.core.cli import user_errors
from bloodcells.core.hydra import CONFIG_DIR
from bloodcells.runs.evaluate import evaluate


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with user_errors():
        evaluate(cfg)


if __name__ == "__main__":
    main()
