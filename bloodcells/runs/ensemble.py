"""Ensemble checkpoints: ``python -m bloodcells.ensemble members=[a.ckpt,b.ckpt] data=...``
or ``sweep=outputs/train/multiruns/<time> top_k=3``.

Members may differ in backbone, input size and normalisation. Scores validation and test
once per member (with the configured TTA), reports every member and the ensemble
(accuracy, balanced accuracy, macro F1, NLL, ECE, before and after temperature scaling),
optionally fits member weights, and writes ``ensemble.json``, which ``predict`` and
``evaluate`` take as ``ckpt_path``. Weights and temperature are fitted on validation only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning.pytorch as pl
from omegaconf import DictConfig

from bloodcells.core.errors import ConfigError, check_positive
from bloodcells.core.hydra import instantiate
from bloodcells.inference.checkpoints import load_classifier
from bloodcells.inference.conformal import configured_sets
from bloodcells.inference.ensemble_file import write_ensemble_file
from bloodcells.inference.ensembling import FITTED_ON, evaluate_variant, fit_weights
from bloodcells.inference.evaluation import Evaluation
from bloodcells.inference.onnx_backend import resolve_backend
from bloodcells.inference.ood import foreign_report
from bloodcells.inference.predictor import Predictor, resolve_device
from bloodcells.inference.stored import is_number
from bloodcells.reporting.html import report_run
from bloodcells.reporting.outputs import format_comparison, plot_reliability, write_comparison, write_evaluation
from bloodcells.runs.evaluate import datamodule_for

log = logging.getLogger(__name__)


def sweep_members(sweep_dir: str, top_k: int) -> list[str]:
    """The best checkpoints of a multirun's top-k jobs by their validation score."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise ConfigError(f"sweep={sweep_dir}: folder not found")
    jobs = []
    for summary in sorted(root.glob("*/summary.json")):
        try:
            s = json.loads(summary.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            log.warning("sweep %s: skipping unreadable %s (%s)", root, summary, err)
            continue
        score, checkpoint = (s.get("best_val_score"), s.get("best_checkpoint")) if isinstance(s, dict) else (None, None)
        if isinstance(checkpoint, str) and checkpoint and is_number(score):
            higher_is_better = "loss" not in str(s.get("monitor", ""))
            jobs.append((score if higher_is_better else -score, checkpoint))
    if not jobs:
        raise ConfigError(f"sweep={sweep_dir}: no job with a summary.json naming a best checkpoint")
    jobs.sort(key=lambda j: j[0], reverse=True)
    chosen = [path for _, path in jobs[:top_k]]
    log.info("sweep %s: top %d of %d jobs by validation score: %s", root, len(chosen), len(jobs), chosen)
    return chosen


def member_paths(cfg: DictConfig) -> list[str]:
    paths = [str(p) for p in (cfg.get("members") or [])]
    if cfg.get("sweep"):
        check_positive("top_k", cfg.top_k)
        paths += sweep_members(cfg.sweep, cfg.top_k)
    if not paths:
        raise ConfigError("no ensemble members: pass members=[a.ckpt,b.ckpt] or sweep=<multirun dir>")
    return paths


def ensemble(cfg: DictConfig) -> dict:
    pl.seed_everything(cfg.seed, workers=True)
    paths = member_paths(cfg)
    tta = instantiate(cfg.tta)
    device = resolve_device(cfg.get("device", "auto"))
    predictor = Predictor([load_classifier(p, device) for p in paths], tta)
    datamodule = datamodule_for(predictor, cfg)
    datamodule.setup()
    views = (len(datamodule.splits["val"]) + len(datamodule.splits["test"])) * tta.n_views
    predictor.backend = resolve_backend(cfg.get("backend", "torch"), device, views)
    val = predictor.scores(datamodule.loader(datamodule.dataset("val"), datamodule.eval_batch_size))
    test = predictor.scores(datamodule.loader(datamodule.dataset("test"), datamodule.eval_batch_size))
    names = predictor.class_names
    views = tta if tta.n_views > 1 else None
    rows = [
        evaluate_variant(
            "plain" if views is None else "tta",
            val.subset([i]),
            test.subset([i]),
            views,
            names,
            name=f"member {i} ({m.hparams.backbone} @{m.hparams.image_size}px)",
        ).row
        for i, m in enumerate(predictor.members)
    ]
    weights, weight_report = None, {"weights": "uniform"}
    if cfg.fit_weights and len(paths) > 1:
        weight_report = fit_weights(val.member_probs(views), val.targets, seed=cfg.seed)
        weights = weight_report["weights"]
        weight_report["weights"] = weights.tolist()
    kind = "ensemble" if views is None else "ensemble+tta"
    result = evaluate_variant(kind, val, test, views, names, weights, name=f"ensemble of {len(paths)}")
    rows.append(result.row)
    run_dir = Path(cfg.paths.output_dir)
    results = Evaluation.score(
        kind,
        result.test_probs,
        test.targets,
        test.index,
        names,
        result.uncalibrated_test_probs,
        tta=tta.key,
        temperature=result.temperature,
        members=len(paths),
    )
    calibration_set = {"probs": result.val_probs, "targets": val.targets}
    results.add_uncertainty(configured_sets(calibration_set, cfg.conformal), test.ood_score(weights), names)
    if results.ood is not None:
        images = datamodule.eval_images(test.index.numpy())
        scorer = Predictor(predictor.members, tta, weights)
        results.uncertainty["foreign"] = foreign_report(scorer, images, results.ood, datamodule.eval_batch_size)
    results.add_sources(datamodule.sites(test.index.numpy()), names)
    metrics = write_evaluation(run_dir, results, datamodule.sources(test.index.numpy()), names, title="ensemble, test")
    note = f"Test split, n={metrics['n']}. Weights and temperatures fitted on the {FITTED_ON}; nothing fitted on test."
    write_comparison(run_dir, rows, note)
    plot_reliability(
        run_dir / "reliability.png",
        test.targets.numpy(),
        {"uncalibrated": result.uncalibrated_test_probs.numpy(), "calibrated": result.test_probs.numpy()},
        f"ensemble of {len(paths)}, test, {tta.key}",
    )
    final_weights = weights.tolist() if weights is not None else [1.0 / len(paths)] * len(paths)
    file = write_ensemble_file(
        run_dir / "ensemble.json",
        paths,
        final_weights,
        tta,
        result.temperature,
        {"fitted_on": FITTED_ON, "weight_fit": weight_report, "data": cfg.data.get("_target_")},
        calibration_set,
    )
    report = report_run(
        run_dir,
        f"bloodcells ensemble of {len(paths)}",
        cfg,
        results,
        datamodule,
        predictor.members[0],
        rows,
        curves_note="an ensemble of trained models: no training curves here (see each member's run); "
        "Grad-CAM shows the first member",
    )
    print(f"Report: {report}")
    print(f"\nEnsemble of {len(paths)} on the test split (TTA {tta.key}):\n{format_comparison(rows)}")
    print(f"weights: {final_weights}  ({'fitted' if weights is not None else 'uniform'})")
    print(f"Ensemble file: {file}  (use it as ckpt_path= in predict and evaluate)")
    print(f"Run dir: {run_dir}")
    return {**metrics, "ensemble_file": str(file), "rows": rows, "weights": final_weights}
