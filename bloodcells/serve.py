"""A local page that shows a model: ``python -m bloodcells.serve ckpt_path=CKPT [port=8000]``.

What it does lives in ``bloodcells.runs.serve``; this module is the command line."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from bloodcells.core.cli import user_errors
from bloodcells.core.hydra import CONFIG_DIR
from bloodcells.runs.serve import serve


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="serve")
def main(cfg: DictConfig) -> None:
    with user_errors():
        serve(cfg)


if __name__ == "__main__":
    main()
