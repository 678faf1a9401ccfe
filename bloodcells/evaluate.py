"""Evaluate a checkpoint or an ensemble file on a data split:
``python -m bloodcells.evaluate ckpt_path=... data=... [tta=dihedral] [split=test]``.

Writes the same artefacts as training's test step (metrics.json, per_class.csv,
predictions.csv, confusion_matrix.png, reliability.png) into its own run dir. With TTA,
metrics.json also counts the predictions TTA changed, fixed and broke.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning.pytorch as pl
from omegaconf import DictConfig

from bloodcells.config import CONFIG_DIR, instantiate, user_errors
from bloodcells.data.datamodule import BloodCellDataModule
from bloodcells.ensemble_file import load_predictor
from bloodcells.errors import DataError, check_choice
from bloodcells.instantiate import build_datamodule
from bloodcells.metrics import compute_metrics
from bloodcells.predictor import Predictor, resolve_device, tta_changes
from bloodcells.report_html import report_run
from bloodcells.reports import format_summary, plot_reliability, write_evaluation
from bloodcells.tta import TTA

SPLITS = ("test", "val", "train", "all")


def configured_tta(cfg: DictConfig) -> TTA | None:
    """``tta=stored`` (empty) keeps what the checkpoint or ensemble file carries."""
    return instantiate(cfg.tta) if cfg.get("tta") else None


def datamodule_for(predictor: Predictor, cfg: DictConfig) -> BloodCellDataModule:
    """The configured data at the predictor's input size, checked against its classes."""
    cfg.data.image_size = predictor.image_size
    datamodule = build_datamodule(cfg)
    if list(datamodule.class_names) != predictor.class_names:
        raise DataError(
            f"{cfg.ckpt_path}: trained on classes {predictor.class_names}, data has {list(datamodule.class_names)}"
        )
    return datamodule


def evaluate(cfg: DictConfig) -> dict:
    pl.seed_everything(cfg.seed, workers=True)
    check_choice("split", cfg.split, SPLITS)
    predictor = load_predictor(cfg.ckpt_path, configured_tta(cfg), resolve_device(cfg.get("device", "auto")))
    datamodule = datamodule_for(predictor, cfg)
    loader = datamodule.loader(datamodule.dataset(cfg.split), datamodule.eval_batch_size)
    out = predictor.predict(loader)
    results = {**out, **compute_metrics(out["probs"], out["targets"], predictor.class_names)}
    results["metrics"].update(tta=predictor.tta.key, temperature=predictor.temperature, members=len(predictor.members))
    if predictor.tta.n_views > 1:
        results["metrics"].update(tta_changes(out["plain_probs"], out["probs"], out["targets"]))
    run_dir = Path(cfg.paths.output_dir)
    sources = datamodule.sources(results["index"].numpy())
    metrics = write_evaluation(run_dir, results, sources, predictor.class_names, title=f"{cfg.split} split")
    plot_reliability(
        run_dir / "reliability.png", out["targets"].numpy(), {predictor.tta.key: out["probs"].numpy()}, cfg.split
    )
    curves_note = f"an evaluation of an existing model ({cfg.ckpt_path}): no training curves"
    if len(predictor.members) > 1:
        curves_note += "; Grad-CAM shows the first ensemble member"
    report = report_run(
        run_dir,
        f"bloodcells evaluate: {cfg.split} split",
        cfg,
        results,
        datamodule,
        predictor.members[0],
        curves_note=curves_note,
    )
    print(f"Report: {report}")
    print(
        f"\nEvaluation of {cfg.ckpt_path} (TTA {predictor.tta.key}, T={predictor.temperature:.3f}) "
        f"on the {cfg.split} split:\n{format_summary(metrics, results['per_class'])}"
    )
    print(f"Run dir: {run_dir}")
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with user_errors():
        evaluate(cfg)


if __name__ == "__main__":
    main()
