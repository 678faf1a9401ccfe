"""The TTA ensemble callback: after fitting, score what would be deployed, four ways.

It takes the run's top-k checkpoints (by the monitored validation metric), scores the
validation and test splits once per member with every TTA view (one pass each, on one
device, every sample once), and from those logits compares plain / TTA / ensemble /
ensemble+TTA, each with a temperature fitted on validation. It stores the best checkpoint's
temperatures inside that checkpoint (``predict`` uses them), writes ``ensemble.json`` for
the top-k ensemble, and leaves the test results of the configured TTA for ``train`` to report.
With ``foreign_score`` it first fits the best checkpoint's foreign-image score
(``inference.ood``: training features, threshold and choice on validation) and stores it in
that checkpoint with the validation probabilities that conformal prediction sets are fitted on.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import ModelCheckpoint

from bloodcells.core.errors import check_choice, check_positive
from bloodcells.inference.checkpoints import load_classifier, write_calibration
from bloodcells.inference.ensemble_file import write_ensemble_file
from bloodcells.inference.ensembling import FITTED_ON, VariantResult, compare_variants
from bloodcells.inference.onnx_backend import BACKENDS, resolve_backend
from bloodcells.inference.ood import fit_ood
from bloodcells.inference.predictor import Predictor, Scores
from bloodcells.inference.tta import NO_TTA, TTA

log = logging.getLogger(__name__)

SUITE_SIZE = 512
"""Validation cells the foreign suite is made from (evenly spaced): enough to rank methods."""


def monitored_checkpoint(trainer: pl.Trainer) -> ModelCheckpoint | None:
    """The ModelCheckpoint that keeps the best epochs by a validation metric."""
    return next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)


def ranked_checkpoints(trainer: pl.Trainer) -> list[str]:
    """The monitored ModelCheckpoint's saved checkpoints, best first."""
    cb = monitored_checkpoint(trainer)
    if cb is None or not cb.best_k_models:
        return []
    ranked = sorted(cb.best_k_models.items(), key=lambda kv: float(kv[1]), reverse=cb.mode == "max")
    return [p for p, _ in ranked]


class TTAEnsembleCallback(pl.Callback):
    def __init__(self, tta: TTA, top_k: int = 1, foreign_score: bool = True, backend: str = "auto") -> None:
        check_positive("callbacks.tta_ensemble.top_k", top_k)
        check_choice("callbacks.tta_ensemble.backend", backend, BACKENDS)
        self.tta, self.top_k, self.foreign_score, self.backend = tta, top_k, foreign_score, backend
        self.variants: list[VariantResult] = []
        self.test: Scores | None = None
        self.val: Scores | None = None
        self.ood_comparison: list[dict] = []
        """Validation AUROC of every foreign-image score method (the kept one is the best)."""
        self.checkpoints: list[str] = []
        self.best_model: pl.LightningModule | None = None

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.interrupted:
            return
        device = trainer.strategy.root_device
        self.checkpoints = ranked_checkpoints(trainer)[: self.top_k]
        if self.checkpoints:
            members = [load_classifier(p, device) for p in self.checkpoints]
        else:  # no checkpoint was written (fast_dev_run): the weights in memory
            members = [module]
        if 0 < len(self.checkpoints) < self.top_k:
            log.warning(
                "tta_ensemble: top_k=%d but only %d checkpoints were kept "
                "(raise callbacks.model_checkpoint.save_top_k)",
                self.top_k,
                len(self.checkpoints),
            )
        self.best_model = members[0]
        datamodule = trainer.datamodule
        if self.foreign_score:
            self.fit_foreign_score(members[0], datamodule)
        views = (len(datamodule.splits["val"]) + len(datamodule.splits["test"])) * self.tta.n_views
        predictor = Predictor(members, self.tta, backend=resolve_backend(self.backend, device, views))
        self.val = predictor.scores(datamodule.val_dataloader())
        self.test = predictor.scores(datamodule.test_dataloader())
        self.variants = compare_variants(self.val, self.test, self.tta, list(module.class_names))
        if self.checkpoints:
            self.store(Path(self.checkpoints[0]).parent.parent)

    def fit_foreign_score(self, model: pl.LightningModule, datamodule: pl.LightningDataModule) -> None:
        """Fit the foreign-image score on the training split; choose it and set its threshold
        on validation (the cells, and foreign images made from them)."""
        val_index = datamodule.splits["val"]
        val_index = val_index[np.linspace(0, len(val_index) - 1, min(len(val_index), SUITE_SIZE)).astype(int)]
        val_images = datamodule.eval_images(val_index)
        train = datamodule.loader(datamodule.dataset("train"), datamodule.eval_batch_size)
        fitted = fit_ood(
            model, train, datamodule.val_dataloader(), val_images, datamodule.eval_batch_size, datamodule.seed
        )
        model.ood, self.ood_comparison = fitted.best, fitted.comparison

    def store(self, run_dir: Path) -> None:
        by_kind = {v.kind: v for v in self.variants}
        temperatures = {NO_TTA.key: by_kind["plain"].temperature}
        if "tta" in by_kind:
            temperatures[self.tta.key] = by_kind["tta"].temperature
        targets = self.val.targets
        conformal = {NO_TTA.key: {"probs": by_kind["plain"].val_probs, "targets": targets}}
        if "tta" in by_kind:
            conformal[self.tta.key] = {"probs": by_kind["tta"].val_probs, "targets": targets}
        calibration = {
            "tta": self.tta.to_dict(),
            "temperatures": temperatures,
            "conformal": conformal,
            "fitted_on": "validation split",
        }
        write_calibration(self.checkpoints[0], calibration, self.best_model.ood)
        if len(self.checkpoints) > 1:
            best = by_kind.get("ensemble+tta") or by_kind["ensemble"]
            n = len(self.checkpoints)
            write_ensemble_file(
                run_dir / "ensemble.json",
                self.checkpoints,
                [1.0 / n] * n,
                self.tta,
                best.temperature,
                {"fitted_on": FITTED_ON, "weights": "uniform over the run's top-k checkpoints"},
                {"probs": best.val_probs, "targets": targets},
            )

    def deployed(self) -> VariantResult:
        """The variant ``train`` reports as its test result: the best checkpoint with the TTA."""
        return next(v for v in self.variants if v.kind == "tta") if self.tta.n_views > 1 else self.variants[0]
