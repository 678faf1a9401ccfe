"""Train, then test the best checkpoint: ``python -m bloodcells.train model=... data=...``.

Writes into the run dir: the resolved config (.hydra/), checkpoints/, metrics.json,
per_class.csv, predictions.csv, confusion_matrix.png, the CSV training log and, with the
TTA ensemble callback (on by default), comparison.csv/.md (plain / TTA / ensemble), the
reliability diagram, the calibrated best checkpoint and ensemble.json (top-k > 1).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from bloodcells.callbacks.tta_ensemble import TTAEnsembleCallback, monitored_checkpoint, ranked_checkpoints
from bloodcells.core.compat import died_of_sigterm, quiet_worker_sigterm
from bloodcells.core.errors import Stopped
from bloodcells.core.files import owned_run_dir
from bloodcells.inference.checkpoints import load_classifier
from bloodcells.inference.conformal import configured_sets
from bloodcells.inference.ensembling import FITTED_ON
from bloodcells.inference.evaluation import Evaluation
from bloodcells.inference.ood import foreign_report
from bloodcells.inference.predictor import Predictor
from bloodcells.reporting.html import report_run
from bloodcells.reporting.model_card import model_facts, write_model_card
from bloodcells.reporting.outputs import (
    format_comparison,
    format_summary,
    plot_reliability,
    write_comparison,
    write_evaluation,
)
from bloodcells.runs.build import build_datamodule, build_model, build_trainer
from bloodcells.runs.resume import resolve_resume

log = logging.getLogger(__name__)


def test_results(
    trainer: pl.Trainer, model: pl.LightningModule, datamodule, conformal: DictConfig
) -> tuple[Evaluation, list[dict], str, object]:
    """Test-split results of what the run deploys (with its prediction sets and foreign-image
    rates when the TTA callback fitted them), the comparison rows, what was scored (in words)
    and the best model (for Grad-CAM)."""
    callback = next((c for c in trainer.callbacks if isinstance(c, TTAEnsembleCallback)), None)
    if callback is not None and callback.variants:
        deployed, scores = callback.deployed(), callback.test
        changes = {k: deployed.row[k] for k in ("changed", "fixed", "broken") if k in deployed.row}
        results = Evaluation.score(
            deployed.kind,
            deployed.test_probs,
            scores.targets,
            scores.index,
            model.class_names,
            deployed.uncalibrated_test_probs,
            **changes,
            temperature=deployed.temperature,
            tta=callback.tta.key,
        )
        what = f"{callback.checkpoints[0] if callback.checkpoints else 'the last weights'} with TTA {callback.tta.key}"
        best = callback.best_model or model
        sets = configured_sets({"probs": deployed.val_probs, "targets": callback.val.targets}, conformal)
        ood = scores.subset([0]).ood_score()
        results.add_uncertainty(sets, ood, model.class_names)
        if ood is not None:
            images = datamodule.eval_images(scores.index.numpy())
            results.uncertainty["foreign"] = foreign_report(Predictor([best]), images, ood, datamodule.eval_batch_size)
            results.uncertainty["foreign_methods"] = callback.ood_comparison
        return results, [v.row for v in callback.variants], what, best
    ranked = ranked_checkpoints(trainer)
    device = trainer.strategy.root_device
    member = load_classifier(ranked[0], device) if ranked else model.to(device)
    scores = Predictor([member]).scores(datamodule.test_dataloader())
    results = Evaluation.score("plain", scores.probs(None), scores.targets, scores.index, model.class_names)
    return results, [], ranked[0] if ranked else "the last weights", member


def stopped_by_sigterm(trainer: pl.Trainer, err: BaseException) -> bool:
    """Whether ``fit`` ended because the job got SIGTERM.

    A scheduler signals every process of the job, so loader workers die too and the loader
    raises RuntimeError, possibly before Lightning's SIGTERM handler has recorded the signal.
    A worker killed by SIGTERM is itself the evidence (see ``bloodcells.compat``).
    """
    return isinstance(err, SIGTERMException) or trainer.received_sigterm or died_of_sigterm(err)


def train(cfg: DictConfig) -> dict:
    """Fit and test in a run dir that this training owns (a second one into it is refused)."""
    with owned_run_dir(Path(cfg.paths.output_dir)):
        return fit_and_test(cfg)


def fit_and_test(cfg: DictConfig) -> dict:
    """Fit, test the best checkpoint, write the reports; returns the test metrics.

    The test runs on rank 0 alone, on one device, so under DDP every test image counts once.
    """
    run_dir = Path(cfg.paths.output_dir)
    done = run_dir / "summary.json"
    if cfg.get("skip_completed", True) and done.is_file():  # a re-run sweep finishes only the missing jobs
        print(f"{run_dir}: completed earlier, skipped (skip_completed=false trains it again)")
        return json.loads(done.read_text())
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg)
    trainer = build_trainer(cfg)
    ckpt_path = resolve_resume(cfg)
    start = time.perf_counter()
    try:
        with quiet_worker_sigterm():
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except (SIGTERMException, RuntimeError) as err:
        if not stopped_by_sigterm(trainer, err):
            raise
        raise Stopped(
            f"stopped by SIGTERM in epoch {trainer.current_epoch}; the last finished epoch is in "
            f"{run_dir / 'checkpoints' / 'last.ckpt'}: resume with ckpt_path=last"
        ) from None
    fit_seconds = time.perf_counter() - start
    if not cfg.get("test", True):
        checkpoint = monitored_checkpoint(trainer)
        score = checkpoint.best_model_score if checkpoint is not None else None
        return {"fit_seconds": fit_seconds, "best_val_score": float(score) if score is not None else None}
    if not trainer.is_global_zero:
        return {}
    results, comparison, what, scored = test_results(trainer, model, datamodule, cfg.conformal)
    results.add_sources(datamodule.sites(results.index.numpy()), model.class_names)
    sources = datamodule.sources(results.index.numpy())
    metrics = write_evaluation(run_dir, results, sources, model.class_names)
    if comparison:
        note = f"Test split, n={metrics['n']}. Temperatures fitted on the {FITTED_ON}; nothing fitted on test."
        write_comparison(run_dir, comparison, note)
        plot_reliability(
            run_dir / "reliability.png",
            results.targets.numpy(),
            {"uncalibrated": results.uncalibrated_probs.numpy(), "calibrated": results.probs.numpy()},
            f"test, {results.metrics['tta']}",
        )
    checkpoint = monitored_checkpoint(trainer)
    best_score = checkpoint.best_model_score if checkpoint is not None else None
    metrics.update(
        fit_seconds=fit_seconds,
        best_checkpoint=checkpoint.best_model_path if checkpoint is not None else "",
        best_val_score=float(best_score) if best_score is not None else None,
        monitor=checkpoint.monitor if checkpoint is not None else None,
        run_dir=str(run_dir),
    )
    (run_dir / "summary.json").write_text(json.dumps(metrics, indent=2))
    write_model_card(
        run_dir,
        model_facts(scored, 1, results.metrics.get("tta", "none"), results.metrics.get("temperature", 1.0)),
        json.loads((run_dir / "metrics.json").read_text()),
        datamodule.summary(),
        "this run's test split (metrics.json)",
    )
    report = report_run(
        run_dir, f"bloodcells train: {cfg.model.backbone}", cfg, results, datamodule, scored, comparison
    )
    print(f"\nTest of {what}:\n{format_summary(metrics, results.per_class)}")
    if comparison:
        print(
            f"\nplain / TTA / ensemble on the test split (temperatures fitted on validation):\n"
            f"{format_comparison(comparison)}"
        )
    print(f"Report: {report}")
    print(f"Run dir: {run_dir}  (metrics.json, per_class.csv, predictions.csv, confusion_matrix.png, checkpoints/)")
    if metrics.get("best_checkpoint"):
        print(f"Show it on a local page: python -m bloodcells.serve ckpt_path={metrics['best_checkpoint']}")
    return metrics
