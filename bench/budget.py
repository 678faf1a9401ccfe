"""Test accuracy against training minutes on 2 CPU cores: the budget curve (issue 10).

Each run is the framework's own CLI, ``python -m bloodcells.train data=npz
data.reader.path=<pbc96 cache>`` with the default recipe, ``callbacks.time_budget.minutes``
set to the budget (training stops at the step where the clock runs out, the cosine fitted
to it; `callbacks.time_budget.stop=epoch`: whole epochs) and the run's overrides,
one run at a time (two trainings on 2 cores distort each other). Pbc96's own leak-free
stratified split; nothing is fitted on test. Each run reports the plain best checkpoint and
the checkpoint with the default TTA (dihedral views, temperature fitted on val), its fit
time (the budget covers this) and the after-fit time (test + TTA/calibration callback).

Results are appended to ``--results`` (JSON lines) as each run ends, so an interrupted
bench keeps what it measured; ``--plot`` draws the figure from that file: a curve for each
recipe measured at three or more budgets on one machine, a point for every other row.

    python bench/budget.py --runs "5" "10" "20" "30" "30 seed=7" "30 finetune=staged"
    python bench/budget.py --plot
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
from pathlib import Path

from common import emit, pbc96_cache, run_train

FIGURES = Path(__file__).resolve().parent / "figures"


def training_minutes(run_dir: Path) -> float | None:
    """Minutes from the data being ready to the last epoch's end (train.log timestamps): the
    training the budget covers. ``fit_min`` also holds the TTA/calibration callback after it."""
    from datetime import datetime

    lines = (run_dir / "train.log").read_text().splitlines()
    stamps = [datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f") for line in lines if line.startswith("[")]
    epochs = [line for line in lines if "bloodcells.train][INFO] - epoch " in line]
    if not stamps or not epochs:
        return None
    last = datetime.strptime(epochs[-1][1:24], "%Y-%m-%d %H:%M:%S,%f")
    return round((last - stamps[0]).total_seconds() / 60, 2)


def run_one(minutes: float, overrides: list[str], cache: Path, label: str) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix=f"budget-{minutes:g}min-"))
    log, wall = run_train(cache, run_dir, [f"callbacks.time_budget.minutes={minutes:g}", *overrides])
    summary = json.loads((run_dir / "summary.json").read_text())
    with open(run_dir / "comparison.csv") as f:
        rows = {row["variant"].split(" ")[0]: row for row in csv.DictReader(f)}
    said = [line.split(" - ", 1)[-1] for line in log.splitlines() if "time budget" in line]
    ended = [line for line in said if "training ended" in line]  # the step the run really stopped at
    decided = [line for line in said if " -> " in line]  # decisions, not the "only N fit" warning
    return {
        "minutes": minutes,
        "overrides": " ".join(overrides),
        "plain_accuracy": round(float(rows["plain"]["accuracy"]), 4),
        "tta_accuracy": round(float(rows["tta"]["accuracy"]), 4),
        "tta_macro_f1": round(float(rows["tta"]["macro_f1"]), 4),
        "tta_balanced_accuracy": round(float(rows["tta"]["balanced_accuracy"]), 4),
        "plain_macro_f1": round(float(rows["plain"]["macro_f1"]), 4),
        "plain_balanced_accuracy": round(float(rows["plain"]["balanced_accuracy"]), 4),
        # test images TTA got right that the plain model missed, and the converse
        "tta_fixed": int(rows["tta"]["fixed"]),
        "tta_broken": int(rows["tta"]["broken"]),
        "n_test": summary["n"],
        "train_min": training_minutes(run_dir),
        "fit_min": round(summary["fit_seconds"] / 60, 2),
        "after_fit_min": round((wall - summary["fit_seconds"]) / 60, 2),
        "best_checkpoint": Path(summary["best_checkpoint"]).name,
        # re-fits under 1% are not logged: the last decision can be steps off where the run stopped
        "budget_log": (ended or decided or [""])[-1],
        "run_dir": str(run_dir),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        **({"label": label} if label else {}),
    }


def cpu_name() -> str:
    """The CPU model (rows from different machines are not one curve)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def recipe(r: dict) -> tuple[str, str, str]:
    """What makes rows one recipe: the overrides, the machine, and the ``label`` a row was
    tagged with (``--label``: the framework changed under the same overrides)."""
    return r["overrides"], r.get("machine", ""), r.get("label", "")


def curves(results: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """Rows of one recipe on one machine at three or more budgets: a curve, one point per
    budget (the mean where a budget ran more than once). The first machine's default-recipe
    rows carry no ``machine``; every other row is a point of its own."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in results:
        groups.setdefault(recipe(r), []).append(r)
    lines = {}
    for key, rows in groups.items():
        budgets = sorted({r["minutes"] for r in rows})
        if len(budgets) < 3:
            continue
        lines[key] = [
            {
                name: sum(r[name] for r in rows if r["minutes"] == m) / sum(r["minutes"] == m for r in rows)
                for name in ("minutes", "train_min", "plain_accuracy", "tta_accuracy")
            }
            for m in budgets
        ]
    return lines


def plot(results: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    lines = curves(results)
    points = [r for r in results if recipe(r) not in lines]
    # the legend gets its own panel, as tall as its entries need: beside the axes it squeezed them
    fig = Figure(figsize=(14, max(4.5, 0.17 * (len(points) + 2 * len(lines)) + 0.8)), layout="constrained")
    ax, legend_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.5]})
    for (overrides, machine, label), curve in lines.items():
        name = f"{overrides or 'default recipe'}{', ' + machine if machine else ''}{', ' + label if label else ''}"
        fit = [r["train_min"] for r in curve]
        (line,) = ax.plot(fit, [100 * r["plain_accuracy"] for r in curve], "o-", label=f"{name} (plain)")
        ax.plot(fit, [100 * r["tta_accuracy"] for r in curve], "s--", color=line.get_color(), label=f"{name} + TTA")
    markers = "^vD<>ph*"  # with 10 colours: 80 points before a (colour, marker) pair repeats
    for i, r in enumerate(points):
        where = f", {r['machine']}" if "machine" in r else ""
        where += ", stop=step" if "stopping at step" in r.get("budget_log", "") else ""
        where += f", {r['label']}" if r.get("label") else ""
        (point,) = ax.plot(
            r["train_min"],
            100 * r["plain_accuracy"],
            markers[i // 10 % len(markers)],
            label=f"{r['overrides'] or 'default'}{where} (plain; TTA hollow)",
        )
        ax.plot(r["train_min"], 100 * r["tta_accuracy"], point.get_marker(), mfc="none", color=point.get_color())
    ax.axhline(98.8, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("training minutes (2 CPU cores)")
    ax.set_ylabel("test accuracy, pbc96 split (%)")
    ax.set_title("lite0 (96 px unless noted): accuracy per CPU-minute")
    ax.grid(alpha=0.3)
    legend_ax.axis("off")
    legend_ax.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="center left", frameon=False)
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", nargs="+", default=["5", "10", "20", "30", "30 seed=7", "30 finetune=staged"])
    parser.add_argument("--results", default=str(FIGURES / "budget.jsonl"))
    parser.add_argument("--plot", action="store_true", help="only draw the curve from --results")
    parser.add_argument("--label", default="", help="tag the rows: the framework changed under the same overrides")
    args = parser.parse_args()
    results_file = Path(args.results)
    if not args.plot:
        cache = pbc96_cache()
        for spec in args.runs:
            minutes, *overrides = spec.split()
            row = run_one(float(minutes), overrides, cache, args.label)
            print(f"RESULT {json.dumps(row)}", flush=True)
            with open(results_file, "a") as f:
                f.write(json.dumps(row) + "\n")
    results = [json.loads(line) for line in results_file.read_text().splitlines() if line.strip()]
    plot(results, FIGURES / "budget.png")
    emit({"bench": "budget", "results": results})


if __name__ == "__main__":
    main()
