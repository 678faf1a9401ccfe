"""Train, then test the best checkpoint: ``python -m bloodcells.train model=... data=...``.

Writes into the run dir: the resolved config (.hydra/), checkpoints/, metrics.json,
per_class.csv, predictions.csv, confusion_matrix.png and the CSV training log.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from bloodcells.config import CONFIG_DIR, user_errors
from bloodcells.inference import evaluate_loader
from bloodcells.instantiate import build_datamodule, build_model, build_trainer
from bloodcells.checkpoints import load_classifier
from bloodcells.reports import format_summary, write_evaluation

log = logging.getLogger(__name__)


def resolve_resume(cfg: DictConfig) -> str | None:
    """``ckpt_path=last``: the newest ``last.ckpt`` of this task's earlier runs."""
    ckpt = cfg.get("ckpt_path")
    if ckpt != "last":
        return ckpt
    runs = Path(cfg.paths.log_dir) / cfg.task_name / "runs"
    candidates = sorted(runs.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"ckpt_path=last: no {runs}/*/checkpoints/last.ckpt to resume from")
    log.info("resuming from %s", candidates[-1])
    return str(candidates[-1])


def train(cfg: DictConfig) -> dict:
    """Fit, test the best checkpoint, write the reports; returns the test metrics.

    The test runs on rank 0 alone, on one device, so under DDP every test image counts once.
    """
    pl.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg)
    trainer = build_trainer(cfg)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=resolve_resume(cfg), weights_only=True)
    fit_seconds = time.perf_counter() - start
    if not cfg.get("test", True):
        return {"fit_seconds": fit_seconds}
    if not trainer.is_global_zero:
        return {}
    best = next((c.best_model_path for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor), "")
    if best:
        model = load_classifier(best, map_location=trainer.strategy.root_device)
    results = evaluate_loader(model.to(trainer.strategy.root_device), datamodule.test_dataloader())
    sources = datamodule.sources(results["index"].numpy())
    metrics = write_evaluation(run_dir, results, sources, model.class_names)
    metrics.update(fit_seconds=fit_seconds, best_checkpoint=best, run_dir=str(run_dir))
    print(f"\nTest of {best or 'the last weights'}:\n{format_summary(metrics, results['per_class'])}")
    print(f"Run dir: {run_dir}  (metrics.json, per_class.csv, predictions.csv, confusion_matrix.png, checkpoints/)")
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    with user_errors():
        metrics = train(cfg)
    return metrics.get("balanced_accuracy")


if __name__ == "__main__":
    main()
