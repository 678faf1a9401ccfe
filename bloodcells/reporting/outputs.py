"""Write an evaluation to a run dir: metrics.json, per_class.csv, predictions.csv, plots."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from bloodcells.inference.evaluation import Evaluation


def prediction_rows(
    sources: list[str],
    probs: np.ndarray,
    class_names: list[str],
    targets: np.ndarray | None = None,
    sets: np.ndarray | None = None,
    ood: np.ndarray | None = None,
) -> list[list[str]]:
    """The header and one row per image: source, [true class,] predicted class, one
    probability per class; with conformal sets, ``prediction_set`` (class names joined by
    ``|``); with a foreign-image score, ``ood_score`` (> 1: foreign) and ``in_distribution``;
    with either, ``abstain`` (a set that is not one class, or a foreign image)."""
    header = ["source"] + (["true"] if targets is not None else []) + ["pred"] + [f"p_{c}" for c in class_names]
    header += ["prediction_set"] if sets is not None else []
    header += ["ood_score", "in_distribution"] if ood is not None else []
    header += ["abstain"] if sets is not None or ood is not None else []
    rows = [header]
    for i, (src, p) in enumerate(zip(sources, probs)):
        row = [src] + ([class_names[int(targets[i])]] if targets is not None else [])
        row += [class_names[int(p.argmax())]] + [f"{x:.6f}" for x in p]
        abstain = False
        if sets is not None:
            row.append("|".join(c for c, inside in zip(class_names, sets[i]) if inside))
            abstain = int(sets[i].sum()) != 1
        if ood is not None:
            row += [f"{ood[i]:.4f}", str(bool(ood[i] <= 1))]
            abstain = abstain or not ood[i] <= 1
        if sets is not None or ood is not None:
            row.append(str(abstain))
        rows.append(row)
    return rows


def csv_text(rows: list[list[str]]) -> str:
    """Rows as CSV text (the csv module's dialect: lines end in CRLF)."""
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def write_rows(path: Path, rows: list[list[str]]) -> None:
    path.write_text(csv_text(rows), newline="")


def plot_confusion_matrix(path: Path, confusion: np.ndarray, class_names: list[str], title: str) -> None:
    """Row-normalised colours (recall per true class) with the counts written in."""
    rows = confusion.sum(axis=1, keepdims=True)
    norm = np.divide(confusion, rows, out=np.zeros_like(confusion, dtype=float), where=rows > 0)
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(
                j,
                i,
                int(confusion[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    fig.colorbar(im, ax=ax, label="fraction of true class")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_evaluation(
    out_dir: Path, result: Evaluation, sources: list[str], class_names: list[str], title: str = "test"
) -> dict:
    """Write every artefact of one evaluation; returns the scalar metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {**result.metrics, "kind": result.kind}
    body = {
        "metrics": metrics,
        "per_class": result.per_class,
        "confusion_matrix": result.confusion_matrix,
        **result.uncertainty,
        **({"by_source": result.by_source} if result.by_source else {}),
    }
    (out_dir / "metrics.json").write_text(json.dumps(body, indent=2))
    with open(out_dir / "per_class.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(result.per_class[0]))
        w.writeheader()
        w.writerows(result.per_class)
    probs = np.asarray(result.probs)
    sets = None if result.sets is None else result.sets.numpy()
    ood = None if result.ood is None else result.ood.numpy()
    rows = prediction_rows(sources, probs, class_names, np.asarray(result.targets), sets, ood)
    write_rows(out_dir / "predictions.csv", rows)
    if "risk_coverage" in result.uncertainty:
        plot_risk_coverage(out_dir / "risk_coverage.png", result.uncertainty["risk_coverage"], title)
    if result.by_source:
        with open(out_dir / "by_source.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(result.by_source[0]))
            w.writeheader()
            w.writerows(result.by_source)
    plot_confusion_matrix(out_dir / "confusion_matrix.png", np.asarray(result.confusion_matrix), class_names, title)
    return metrics


def plot_risk_coverage(path: Path, curve: list[dict], title: str) -> None:
    """Accuracy of the accepted images against the share accepted (most confident first)."""
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    ax.plot([r["accepted"] for r in curve], [r["accuracy"] for r in curve], marker="o", ms=2)
    ax.set_xlabel("share of images accepted (most confident first)")
    ax.set_ylabel("accuracy of the accepted images")
    ax.set_xlim(0, 1)
    ax.set_title(f"risk-coverage, {title}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def format_summary(metrics: dict, per_class: list[dict]) -> str:
    lines = [
        f"accuracy {metrics['accuracy']:.4f} "
        f"(95% CI {metrics['accuracy_ci_low']:.3f}-{metrics['accuracy_ci_high']:.3f})  "
        f"balanced {metrics['balanced_accuracy']:.4f}  "
        f"macro-F1 {metrics['macro_f1']:.4f}  AUROC {metrics['macro_auroc']:.4f}  "
        f"ECE {metrics['ece']:.4f}  (n={metrics['n']})",
        "recall per class: " + "  ".join(f"{r['class']} {r['recall']:.2f}" for r in per_class),
    ]
    return "\n".join(lines)


def plot_reliability(path: Path, targets: np.ndarray, curves: dict[str, np.ndarray], title: str) -> None:
    """Reliability diagram: accuracy against mean confidence per bin, one line per curve
    (e.g. before/after temperature scaling), with each curve's ECE in the legend."""
    import torch

    from bloodcells.inference.calibration import expected_calibration_error, reliability_bins

    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    y = torch.as_tensor(targets)
    for label, probs in curves.items():
        p = torch.as_tensor(probs)
        conf, acc, count = reliability_bins(p, y)
        used = count > 0
        ece = expected_calibration_error(p, y)
        ax.plot(conf[used], acc[used], marker="o", ms=3, label=f"{label} (ECE {ece:.4f})")
    ax.set_xlabel("mean confidence in bin")
    ax.set_ylabel("accuracy in bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


COMPARISON_COLUMNS = (
    "variant",
    "members",
    "views",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "nll",
    "ece",
    "temperature",
    "nll_calibrated",
    "ece_calibrated",
    "changed",
    "fixed",
    "broken",
)


def write_shift_table(out_dir: Path, rows: list[dict]) -> None:
    """shifts.csv: accuracy of the scored images under each shift of the suite."""
    with open(out_dir / "shifts.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def write_comparison(out_dir: Path, rows: list[dict], note: str) -> None:
    """comparison.csv and comparison.md: one row per variant (plain, TTA, ensemble...)."""
    with open(out_dir / "comparison.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COMPARISON_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (out_dir / "comparison.md").write_text(format_comparison(rows) + f"\n\n{note}\n")


def format_comparison(rows: list[dict]) -> str:
    """A Markdown table (also what the CLI prints)."""
    cols = [c for c in COMPARISON_COLUMNS if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.4f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
