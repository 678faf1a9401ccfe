"""One self-contained ``report.html`` per run dir (images embedded), for a supervisor.

Sections: resolved config, data summary (counts per class and split, cleaning decisions),
learning curves, metrics and per-class table, confusion matrix, reliability diagram, the
TTA/ensemble comparison, the Grad-CAM grid and the misclassified gallery. Each figure is also
a PNG of its own in the run dir. A section without content says why (e.g. an evaluation of
an existing model has no training curves).
"""

from __future__ import annotations

import base64
import csv
import html
from pathlib import Path

from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from bloodcells.inference.evaluation import Evaluation

SECTIONS = (
    ("config", "Resolved config"),
    ("data", "Data"),
    ("curves", "Learning curves"),
    ("metrics", "Metrics"),
    ("confusion", "Confusion matrix"),
    ("reliability", "Reliability diagram"),
    ("uncertainty", "Prediction sets and foreign images"),
    ("comparison", "TTA / ensemble comparison"),
    ("gradcam", "Grad-CAM"),
    ("misclassified", "Misclassified images"),
)


def plot_learning_curves(csv_path: Path, out: Path) -> Path | None:
    """Train/val loss and val accuracy per epoch from Lightning's CSV log."""
    if not csv_path.is_file():
        return None
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    series: dict[str, dict[int, float]] = {}
    for r in rows:
        if not r.get("epoch"):
            continue
        for key in ("train/loss", "val/loss", "val/acc", "val/balanced_acc"):
            if r.get(key):
                series.setdefault(key, {})[int(r["epoch"])] = float(r[key])
    if not series:
        return None
    fig = Figure(figsize=(9, 3.5))
    loss_ax, acc_ax = fig.subplots(1, 2)
    for key, ax in (("train/loss", loss_ax), ("val/loss", loss_ax), ("val/acc", acc_ax), ("val/balanced_acc", acc_ax)):
        if key in series:
            epochs = sorted(series[key])
            ax.plot(epochs, [series[key][e] for e in epochs], marker="o", ms=3, label=key)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_title("loss")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_title("validation accuracy")
    loss_ax.legend(fontsize=8)
    acc_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def image_tag(path: str | Path | None, alt: str) -> str:
    if not path or not Path(path).is_file():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return ""
    columns = columns or list(rows[0])

    def cell(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


FITTED_ON_SCORED = {
    "none": "Nothing was fitted on the scored images: the weights, temperature, prediction sets and "
    "foreign-image threshold all come from the training and validation splits.",
    "bn": "adapt=bn: the BatchNorm statistics were re-estimated on the scored images themselves (no labels); "
    "nothing else was fitted on them.",
    "tent": "adapt=tent: the BatchNorm scales, shifts and statistics were fitted to the scored images "
    "themselves (prediction entropy, no labels); nothing else was fitted on them.",
}


def write_report(
    run_dir: Path,
    title: str,
    cfg: DictConfig | dict,
    metrics: dict,
    per_class: list[dict],
    data_summary: dict | None = None,
    comparison: list[dict] | None = None,
    figures: dict[str, str] | None = None,
    curves_note: str | None = None,
    uncertainty: dict | None = None,
    by_source: list[dict] | None = None,
) -> Path:
    """Write ``run_dir/report.html``; ``curves_note`` replaces the learning curves (say why)."""
    figures = dict(figures or {})
    curves = (
        None if curves_note else plot_learning_curves(run_dir / "csv" / "metrics.csv", run_dir / "learning_curves.png")
    )
    config_text = OmegaConf.to_yaml(cfg) if isinstance(cfg, DictConfig) else str(cfg)
    body = {
        "config": f"<pre>{html.escape(config_text)}</pre>",
        "data": data_html(data_summary),
        "curves": image_tag(curves, "learning curves") or note(curves_note or "no training log in this run dir"),
        "metrics": table([{k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}])
        + note(FITTED_ON_SCORED.get(str(metrics.get("adapt", "none")), ""))
        + table(per_class)
        + ("<h3>By source</h3>" + table(by_source) if by_source else ""),
        "confusion": image_tag(run_dir / "confusion_matrix.png", "confusion matrix"),
        "reliability": image_tag(run_dir / "reliability.png", "reliability diagram"),
        "uncertainty": uncertainty_html(run_dir, uncertainty or {}),
        "comparison": table(comparison or []) or note("TTA/ensemble comparison not run (callbacks.tta_ensemble=null)"),
        "gradcam": image_tag(figures.get("gradcam_grid"), "Grad-CAM grid") or note("no Grad-CAM figure"),
        "misclassified": image_tag(figures.get("misclassified"), "misclassified gallery")
        or note("no misclassified image (or no labels)"),
    }
    sections = "".join(
        f'<section id="{key}"><h2>{html.escape(name)}</h2>{body[key] or note("not available")}</section>'
        for key, name in SECTIONS
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(str(run_dir))}</p>{sections}</body></html>\n"
    )
    path = run_dir / "report.html"
    path.write_text(page)
    return path


def uncertainty_html(run_dir: Path, uncertainty: dict) -> str:
    """Conformal coverage (overall and per class), the risk-coverage curve, foreign-image rates."""
    parts = []
    conformal = uncertainty.get("conformal")
    if conformal:
        head = {k: v for k, v in conformal.items() if not isinstance(v, (dict, list))}
        per_class = [{"class": c, "coverage": v} for c, v in conformal["coverage_per_class"].items()]
        parts.append(
            "<h3>Conformal prediction sets</h3>"
            + note(
                f"Fitted on the validation split ({conformal['n_calibration']} images), never on these images: "
                f"each set should hold the true class for at least {1 - conformal['alpha']:.0%} of images"
                + (" of every class." if conformal["class_conditional"] else ".")
            )
            + table([head])
            + table(per_class)
        )
        if conformal["marginal_only_classes"]:
            parts.append(
                note(
                    f"too few validation images for a threshold of their own: {conformal['marginal_only_classes']} "
                    "use the overall threshold (overall guarantee only)"
                )
            )
    else:
        parts.append(note("no conformal calibration stored for this TTA (train with callbacks.tta_ensemble on)"))
    parts.append(image_tag(run_dir / "risk_coverage.png", "risk-coverage curve"))
    foreign = uncertainty.get("foreign")
    if foreign:
        parts.append(
            "<h3>Foreign images</h3>"
            + note(
                "Built-in suite made from the scored cells (defaced cells, photo crops, noise, blank frames, extreme "
                "colour and blur): AUROC against the cells and the share wrongly accepted at the threshold that "
                "accepts 95% of validation cells."
            )
            + table(foreign)
        )
        if uncertainty.get("foreign_methods"):
            parts.append(
                note("How the score was chosen: mean AUROC on the suite made from validation cells, per candidate.")
                + table(uncertainty["foreign_methods"])
            )
    else:
        parts.append(note("no foreign-image score in this model"))
    return "".join(parts)


def data_html(summary: dict | None) -> str:
    if not summary:
        return note("no data summary")
    parts = [table(summary["counts"])]
    if summary.get("cleaning"):
        parts.append("<h3>Cleaning</h3>" + table([{k: str(v) for k, v in summary["cleaning"].items()}]))
    else:
        parts.append(note("no cleaning in this run (data.clean=false)"))
    return "".join(parts)


STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
    "table{border-collapse:collapse;margin:0.5em 0;font-size:0.85em}td,th{border:1px solid #ccc;padding:2px 6px}"
    "img{max-width:100%}pre{background:#f6f6f6;padding:0.5em;max-height:25em;overflow:auto;font-size:0.8em}"
    ".note{color:#666;font-style:italic}"
)


def report_run(
    run_dir: Path,
    title: str,
    cfg: DictConfig,
    result: Evaluation,
    datamodule,
    model,
    comparison: list[dict] | None = None,
    curves_note: str | None = None,
) -> Path:
    """Grad-CAM figures of ``model`` on the scored images, then ``report.html``."""
    from bloodcells.reporting.gradcam import explanation_figures

    index = result.index.numpy()
    figures = explanation_figures(
        model,
        datamodule.data.images[index],
        result.probs.numpy(),
        list(model.class_names),
        run_dir,
        labels=result.targets.numpy(),
    )
    return write_report(
        run_dir,
        title,
        cfg,
        result.metrics,
        result.per_class,
        datamodule.summary(),
        comparison,
        figures,
        curves_note,
        result.uncertainty,
        result.by_source,
    )
