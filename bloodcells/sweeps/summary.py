"""Summarise a multirun: ``python -m bloodcells.summarize outputs/train/multiruns/<time>``.

One row per job: its overrides, status (completed / pruned / failed with its error / incomplete),
test and validation metrics, fit time and best checkpoint; rows that differ only by
``seed`` are aggregated (mean +- std, n). Writes ``summary.csv``, ``summary.md`` and
``summary.png`` into the sweep dir. Runs by itself after every multirun (a Hydra callback),
and by hand for an interrupted or still-running sweep.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from bloodcells.core.cli import root_cause
from bloodcells.core.compat import job_return_value

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "nll", "ece", "best_val_score", "fit_seconds")


def job_row(job_dir: Path) -> dict[str, Any]:
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in OmegaConf.load(overrides_file)] if overrides_file.is_file() else []
    row: dict[str, Any] = {"job": job_dir.name, "overrides": " ".join(overrides)}
    summary, error = job_dir / "summary.json", job_dir / "error.txt"
    if summary.is_file():
        s = json.loads(summary.read_text())
        row.update(status="completed", **{k: s.get(k) for k in METRICS}, best_checkpoint=s.get("best_checkpoint"))
    elif (job_dir / "pruned.json").is_file():  # stopped by the Optuna pruner: an outcome, not a failure
        pruned = json.loads((job_dir / "pruned.json").read_text())
        row.update(status="pruned", error=f"pruned after epoch {pruned['epoch'] + 1}: {pruned}")
    elif error.is_file():
        row.update(status="failed", error=error.read_text().strip().splitlines()[-1][:300])
    else:
        row.update(status="incomplete")
    return row


def without_seed(overrides: str) -> str:
    return " ".join(o for o in overrides.split() if not o.split("=")[0].lstrip("+") == "seed")


def aggregate(rows: list[dict]) -> list[dict]:
    """Completed rows grouped by their overrides without ``seed``: mean, std and n."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["status"] == "completed":
            groups.setdefault(without_seed(r["overrides"]), []).append(r)
    out = []
    for key, members in groups.items():
        row: dict[str, Any] = {"overrides (seeds pooled)": key or "(none)", "n": len(members)}
        for m in ("accuracy", "balanced_accuracy", "macro_f1"):
            values = [r[m] for r in members if r.get(m) is not None]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                row[m] = f"{statistics.mean(values):.4f} +- {std:.4f}"
        out.append(row)
    return out


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [
            f"{v:.4f}" if isinstance(v, float) else str(v if v is not None else "") for v in (r.get(c) for c in cols)
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def summarize(sweep_dir: str | Path) -> list[dict]:
    sweep = Path(sweep_dir)
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir()), key=lambda p: p.name)
    rows = [job_row(j) for j in sorted(jobs, key=lambda p: int(p.name) if p.name.isdigit() else p.name)]
    columns = ["job", "overrides", "status", *METRICS, "best_checkpoint", "error"]
    with open(sweep / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    pooled = aggregate(rows)
    (sweep / "summary.md").write_text(
        f"# Sweep {sweep}\n\n{markdown(rows)}\n\n## Seeds pooled (mean +- std over jobs that differ only by seed)\n\n"
        f"{markdown(pooled)}\n"
    )
    chart(sweep / "summary.png", rows)
    return rows


def chart(path: Path, rows: list[dict]) -> None:
    done = [r for r in rows if r["status"] == "completed" and r.get("accuracy") is not None]
    fig = Figure(figsize=(8, 0.4 * max(len(done), 2) + 1))
    ax = fig.subplots()
    labels = [f"{r['job']}: {r['overrides'][:60]}" for r in done]
    ax.barh(range(len(done)), [r["accuracy"] for r in done], color="tab:blue", label="test accuracy")
    ax.barh(
        range(len(done)),
        [r["balanced_accuracy"] for r in done],
        height=0.3,
        color="tab:orange",
        label="test balanced accuracy",
    )
    ax.set_yticks(range(len(done)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


class SweepSummary(Callback):
    """Hydra callback: a failed job leaves ``error.txt`` in its dir; the multirun ends with a summary."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.FAILED:
            out = Path(config.hydra.runtime.output_dir)
            err = root_cause(job_return_value(job_return))
            (out / "error.txt").write_text(f"{type(err).__name__}: {err}\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if sweep.is_dir():
            rows = summarize(sweep)
            failed = sum(r["status"] == "failed" for r in rows)
            print(f"Sweep summary ({len(rows)} jobs, {failed} failed): {sweep / 'summary.md'}")
            if failed:
                raise SystemExit(1)  # every job ran; the exit code still says some failed
