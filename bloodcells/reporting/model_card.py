"""MODEL_CARD.md beside a trained or exported model: what it is for, what it was trained on,
how well it did on its held-out test split, how far to trust its probabilities, sets and
foreign-image flag, and what it is known not to do (Mitchell et al. 2019, "Model Cards")."""

from __future__ import annotations

import json
from pathlib import Path

INTENDED_USE = (
    "Research and teaching: classifying single peripheral blood cells, one cell per image, from "
    "May-Grünwald-Giemsa-stained smears photographed like the training images, into the classes below. "
    "**Not a medical device and not for diagnosis**: no clinical validation was done."
)

KNOWN_LIMITS = (
    "- Trained on one laboratory's images (one stain protocol, one camera, one magnification). Other sites' "
    "cells lose accuracy, often while the model stays confident; `adapt=bn` (BatchNorm statistics of the new "
    "site's unlabelled images) and `aug=robust` reduce the loss (docs/inference.md, BENCHMARKS.md).",
    "- The foreign-image flag was fitted and checked on a synthetic suite (defaced cells, photo crops, noise, "
    "blank frames, extreme colour and blur); foreign images unlike those may pass as cells, and real cells under "
    "heavy JPEG compression, blur, zoom or over-exposure are flagged as foreign (BENCHMARKS.md).",
    "- Prediction sets hold the true class at the stated rate only for images exchangeable with the validation "
    "split; under a shift of stain or camera the coverage is not guaranteed.",
    "- Metrics below come from the training run's own test split, drawn from the same data as the training images.",
)


def md_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "_none_"
    columns = columns or list(rows[0])

    def cell(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def model_card(model: dict, evaluation: dict | None, data: dict | None, metrics_from: str) -> str:
    """The card's Markdown. ``model``: backbone, image size, classes, TTA, temperature...;
    ``evaluation``: a metrics.json body (or None); ``data``: the datamodule summary."""
    parts = [f"# Model card: {model['backbone']} blood-cell classifier", "## Intended use", INTENDED_USE]
    parts += ["## Model", md_table([{k: v for k, v in model.items() if k != "class_names"}])]
    parts += [f"Classes: {', '.join(model['class_names'])}."]
    parts += ["## Data and provenance"]
    if data:
        parts += [f"Source: `{data.get('source', 'unknown')}`."]
        parts += [md_table(data["counts"])] if data.get("counts") else []
        if data.get("cleaning"):
            parts += ["Cleaning: " + ", ".join(f"{k} {v}" for k, v in data["cleaning"].items()) + "."]
    else:
        parts += ["_not recorded_"]
    if evaluation is None:
        parts += ["## Metrics", f"_no metrics found ({metrics_from})_"]
    else:
        m = evaluation["metrics"]
        parts += [
            "## Metrics",
            f"From {metrics_from} ({m.get('n')} images, {m.get('kind', '')}, TTA {m.get('tta', 'none')}).",
            md_table([{k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc") if k in m}]),
            md_table(evaluation.get("per_class", [])),
            "## Calibration",
            f"Temperature {m.get('temperature', 1.0):.3f} fitted on the validation split; "
            f"test ECE {m.get('ece', float('nan')):.4f}, NLL {m.get('nll', float('nan')):.4f}.",
        ]
        conformal = evaluation.get("conformal")
        parts += ["## Prediction sets"]
        if conformal:
            per_class = [{"class": c, "coverage": v} for c, v in conformal["coverage_per_class"].items()]
            parts += [
                f"Split conformal ({conformal['score']}, "
                f"{'class-conditional' if conformal['class_conditional'] else 'marginal'}), alpha "
                f"{conformal['alpha']}, fitted on {conformal['n_calibration']} validation images: test coverage "
                f"{conformal['coverage']:.4f}, mean set size {conformal['mean_set_size']:.2f}, "
                f"{conformal['singleton_share']:.1%} single-class sets.",
                md_table(per_class),
            ]
            if conformal.get("marginal_only_classes"):
                parts += [f"Overall guarantee only (too few validation images): {conformal['marginal_only_classes']}."]
        else:
            parts += ["_no conformal calibration_"]
        parts += ["## Foreign images"]
        if evaluation.get("foreign"):
            parts += [
                "AUROC against the test cells and share wrongly accepted at the threshold that accepts 95% of "
                "validation cells:",
                md_table(evaluation["foreign"]),
            ]
        else:
            parts += ["_no foreign-image score_"]
    parts += ["## Known limits", *KNOWN_LIMITS]
    return "\n\n".join(parts) + "\n"


def write_model_card(folder: Path, model: dict, evaluation: dict | None, data: dict | None, metrics_from: str) -> Path:
    path = folder / "MODEL_CARD.md"
    path.write_text(model_card(model, evaluation, data, metrics_from))
    return path


def model_facts(model, members: int, tta: str, temperature: float) -> dict:
    """The card's model table: the (first) member's architecture and what the predictor adds."""
    return {
        "backbone": model.hparams.backbone,
        "image_size": model.hparams.image_size,
        "members": members,
        "tta": tta,
        "temperature": round(float(temperature), 4),
        "stain_norm": model.hparams.get("stain_norm", "none"),
        "foreign_score": "none" if model.ood is None else model.ood.name,
        "class_names": list(model.class_names),
    }


def run_file(ckpt_path: str | Path, name: str) -> Path | None:
    """``name`` (metrics.json, report.html) of the training run a checkpoint
    (``RUN/checkpoints/x.ckpt``) or an ensemble file (``RUN/ensemble.json``) came from."""
    path = Path(ckpt_path).resolve()
    return next((f for f in (path.parent / name, path.parent.parent / name) if f.is_file()), None)


def run_metrics(ckpt_path: str | Path) -> tuple[dict | None, str]:
    """The metrics.json of the model's training run, and where it was found."""
    found = run_file(ckpt_path, "metrics.json")
    if found is None:
        return None, "no metrics.json beside the model"
    try:
        return json.loads(found.read_text()), f"`{found}`"
    except json.JSONDecodeError:
        return None, f"`{found}` (unreadable)"
