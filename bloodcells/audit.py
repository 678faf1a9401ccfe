"""Find likely label errors: ``python -m bloodcells.audit data=... [ckpt_path=CKPT] [folds=5]``.

What it does lives in ``bloodcells.runs.audit``; this module is the command line."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from bloodcells.core.cli import user_errors
from bloodcells.core.hydra import CONFIG_DIR
from bloodcells.runs.audit import audit


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="audit")
def main(cfg: DictConfig) -> None:
    with user_errors():
        audit(cfg)


if __name__ == "__main__":
    main()
