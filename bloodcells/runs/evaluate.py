"""Evaluate a checkpoint or an ensemble file on a data split:
``python -m bloodcells.evaluate ckpt_path=... data=... [tta=dihedral] [split=test]``.

Writes the same artefacts as training's test step (metrics.json, per_class.csv,
predictions.csv, confusion_matrix.png, reliability.png) into its own run dir. With TTA,
metrics.json also counts the predictions TTA changed, fixed and broke.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig

from bloodcells.core.errors import DataError, check_choice
from bloodcells.core.hydra import instantiate
from bloodcells.data.datamodule import BloodCellDataModule, array_loader, data_source, same_source, split_digest
from bloodcells.data.shifts import SHIFTS, shifted
from bloodcells.inference.adapt import ADAPT_BATCH, TentSettings, adapted_predictor
from bloodcells.inference.conformal import configured_sets
from bloodcells.inference.ensemble_file import load_predictor
from bloodcells.inference.evaluation import Evaluation
from bloodcells.inference.metrics import compute_metrics
from bloodcells.inference.onnx_backend import resolve_backend
from bloodcells.inference.ood import foreign_report
from bloodcells.inference.predictor import Predictor, resolve_device, tta_changes
from bloodcells.inference.tta import TTA
from bloodcells.reporting.html import report_run
from bloodcells.reporting.outputs import format_summary, plot_reliability, write_evaluation, write_shift_table
from bloodcells.runs.build import build_datamodule

SPLITS = ("test", "val", "train", "all")

log = logging.getLogger(__name__)


def configured_tta(cfg: DictConfig) -> TTA | None:
    """``tta=stored`` (empty) keeps what the checkpoint or ensemble file carries."""
    return instantiate(cfg.tta) if cfg.get("tta") else None


def datamodule_for(predictor: Predictor, cfg: DictConfig) -> BloodCellDataModule:
    """The configured data at the predictor's input size, checked against its classes; on the
    members' own training data, split as their training run split it."""
    cfg.data.image_size = predictor.image_size
    datamodule = build_datamodule(cfg)
    model = str(cfg.get("ckpt_path") or "the ensemble members")
    if list(datamodule.class_names) != predictor.class_names:
        raise DataError(f"{model}: trained on classes {predictor.class_names}, data has {list(datamodule.class_names)}")
    use_training_split(datamodule, predictor, model)
    return datamodule


def use_training_split(datamodule: BloodCellDataModule, predictor: Predictor, where: str) -> None:
    """Score the split the model's training held out, never one that overlaps its training images.

    On the data it was trained on, a model's checkpoint decides the split (seed, fractions,
    cleaning), whatever the config says; the digests of the split's members must match
    (data changed since training: refused). Members split differently: refused.
    """
    source = data_source(datamodule.reader)
    records = [m.data_record for m in predictor.members if same_source(m.data_record.get("source", {}), source)]
    if not records:
        log.info("%s: trained on other data than %s; the configured split is used", where, datamodule.source_name)
        return
    definitions = [r.get("split") for r in records]
    if any(d is None for d in definitions):
        log.warning(
            "%s: written before checkpoints recorded their split; make sure data.split_seed, the fractions and "
            "data.clean are the training run's, or the scored split may hold training images",
            where,
        )
        return
    settings = [{k: v for k, v in d.items() if k != "digests"} for d in definitions]
    if any(s != settings[0] for s in settings):
        raise DataError(
            f"{where}: the members were trained on different splits of {datamodule.source_name}, so every split "
            "holds some member's training images; evaluate them on data none of them saw (split=all)"
        )
    chosen = settings[0]
    configured = {k: getattr(datamodule, k) for k in chosen}
    if configured != chosen:
        changed = ", ".join(f"{k}={chosen[k]!r}" for k in chosen if configured[k] != chosen[k])
        log.warning("%s: using the split it was trained with (%s), not the configured one", where, changed)
    datamodule.use_split_definition(chosen)
    datamodule.setup()
    for split, digest in definitions[0].get("digests", {}).items():
        if split_digest(datamodule.data, datamodule.splits[split]) != digest:
            raise DataError(
                f"{where}: the {split} split of {datamodule.source_name} is not the one the model was trained "
                "with (the data changed since training), so its test images may be training images"
            )


def evaluate(cfg: DictConfig) -> dict:
    pl.seed_everything(cfg.seed, workers=True)
    check_choice("split", cfg.split, SPLITS)
    device = resolve_device(cfg.get("device", "auto"))
    predictor = load_predictor(cfg.ckpt_path, configured_tta(cfg), device)
    datamodule = datamodule_for(predictor, cfg)
    datamodule.setup()
    views = len(datamodule.splits[cfg.split]) * predictor.tta.n_views
    predictor.backend = resolve_backend(cfg.get("backend", "torch"), device, views)
    loader = datamodule.loader(datamodule.dataset(cfg.split), datamodule.eval_batch_size)
    adapt = cfg.get("adapt", "none")
    base = predictor
    adapting = datamodule.loader(datamodule.dataset(cfg.split), ADAPT_BATCH)
    tent = TentSettings.from_config(cfg.get("tent"))
    predictor = adapted_predictor(base, adapt, adapting, tent)  # fitted on the scored images only, no labels
    out = predictor.predict(loader)
    views = predictor.tta.n_views > 1
    kind = {(False, False): "plain", (False, True): "tta", (True, False): "ensemble", (True, True): "ensemble+tta"}[
        (len(predictor.members) > 1, views)
    ]
    changes = tta_changes(out["plain_probs"], out["probs"], out["targets"]) if views else {}
    results = Evaluation.score(
        kind,
        out["probs"],
        out["targets"],
        out["index"],
        predictor.class_names,
        **changes,
        tta=predictor.tta.key,
        temperature=predictor.temperature,
        members=len(predictor.members),
        adapt=adapt,
    )
    results.add_uncertainty(
        configured_sets(predictor.calibration_set, cfg.conformal), out["ood"], predictor.class_names
    )
    if cfg.split in ("val", "all") and results.sets is not None:
        log.warning(
            "split=%s: the prediction sets were fitted on the validation split, so coverage here is "
            "not an honest estimate",
            cfg.split,
        )
    if out["ood"] is not None:
        images = datamodule.eval_images(results.index.numpy())
        results.uncertainty["foreign"] = foreign_report(
            predictor, images, out["ood"], datamodule.eval_batch_size, cfg.seed
        )
    results.add_sources(datamodule.sites(results.index.numpy()), predictor.class_names)
    run_dir = Path(cfg.paths.output_dir)
    sources = datamodule.sources(results.index.numpy())
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
        f"on the {cfg.split} split:\n{format_summary(metrics, results.per_class)}"
    )
    for row in results.by_source:
        print(
            f"  source {row['source']}: accuracy {row['accuracy']:.4f}  balanced {row['balanced_accuracy']:.4f}  "
            f"(n={row['n']})"
        )
    if cfg.get("shifts", False):
        rows = shift_suite(base, adapt, datamodule, datamodule.splits[cfg.split], datamodule.eval_batch_size, tent)
        write_shift_table(run_dir, rows)
        metrics["shifts"] = {r["shift"]: r["accuracy"] for r in rows}
        (run_dir / "metrics.json").write_text(
            json.dumps({**json.loads((run_dir / "metrics.json").read_text()), "shifts": rows}, indent=2)
        )
        print(f"\naccuracy under each shift of the scored images (adapt={adapt}):")
        print("\n".join(f"  {r['shift']:<26} {r['accuracy']:.4f}" for r in rows))
    print(f"Run dir: {run_dir}")
    return metrics


def shift_suite(
    predictor: Predictor,
    adapt: str,
    datamodule: BloodCellDataModule,
    index,
    batch_size: int,
    tent: TentSettings | None = None,
) -> list[dict]:
    """The scored images under every shift of ``data.shifts.SHIFTS`` (at the model's input
    size); with ``adapt=bn|tent`` each shifted set is its own site and is adapted to on its own."""
    images = datamodule.eval_images(index)
    targets = torch.as_tensor(datamodule.data.labels[index])
    rows = []
    for name in ("none", *SHIFTS):
        x = shifted(images, name)
        scorer = adapted_predictor(predictor, adapt, array_loader(x, ADAPT_BATCH), tent)
        probs = scorer.predict(array_loader(x, batch_size))["probs"]
        m = compute_metrics(probs, targets, predictor.class_names)["metrics"]
        rows.append(
            {
                "shift": name,
                "accuracy": m["accuracy"],
                "balanced_accuracy": m["balanced_accuracy"],
                "macro_f1": m["macro_f1"],
                "ece": m["ece"],
                "n": int(len(x)),
            }
        )
    return rows
