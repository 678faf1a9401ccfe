"""Grad-CAM overlays: ``python -m bloodcells.explain ckpt_path=CKPT [input=...]``.

What it does lives in ``bloodcells.runs.explain``; this module is the command line."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from bloodcells.core.cli import user_errors
from bloodcells.core.hydra import CONFIG_DIR
from bloodcells.runs.explain import explain


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="explain")
def main(cfg: DictConfig) -> None:
    with user_errors():
        explain(cfg)


if __name__ == "__main__":
    main()
