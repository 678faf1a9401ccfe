"""Evaluate a checkpoint on a data split: ``python -m bloodcells.evaluate ckpt_path=... data=...``.

Writes the same artefacts as training's test step (metrics.json, per_class.csv,
predictions.csv, confusion_matrix.png) into its own run dir.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning.pytorch as pl
from omegaconf import DictConfig

from bloodcells.config import CONFIG_DIR, user_errors
from bloodcells.data.datamodule import BloodCellDataModule
from bloodcells.errors import DataError
from bloodcells.inference import evaluate_loader
from bloodcells.instantiate import build_datamodule
from bloodcells.checkpoints import load_classifier
from bloodcells.models.module import CellClassifier
from bloodcells.reports import format_summary, write_evaluation


def datamodule_for(model: CellClassifier, cfg: DictConfig) -> BloodCellDataModule:
    """The configured data, resized to the model's input size and checked against its classes."""
    cfg.data.image_size = model.hparams.image_size
    datamodule = build_datamodule(cfg)
    if list(datamodule.class_names) != model.class_names:
        raise DataError(
            f"{cfg.ckpt_path}: trained on classes {model.class_names}, data has {list(datamodule.class_names)}"
        )
    return datamodule


def evaluate(cfg: DictConfig) -> dict:
    pl.seed_everything(cfg.seed, workers=True)
    model = load_classifier(cfg.ckpt_path)
    datamodule = datamodule_for(model, cfg)
    loader = datamodule.loader(datamodule.dataset(cfg.split), datamodule.eval_batch_size)
    results = evaluate_loader(model, loader)
    run_dir = Path(cfg.paths.output_dir)
    sources = datamodule.sources(results["index"].numpy())
    metrics = write_evaluation(run_dir, results, sources, model.class_names, title=f"{cfg.split} split")
    print(f"\nEvaluation of {cfg.ckpt_path} on the {cfg.split} split:\n{format_summary(metrics, results['per_class'])}")
    print(f"Run dir: {run_dir}")
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with user_errors():
        evaluate(cfg)


if __name__ == "__main__":
    main()
