"""Epoch time with and without ``model.compile`` inside the framework (issue 20), same run.

Each variant is the CLI, ``python -m bloodcells.train data=npz data.reader.path=<pbc96>
trainer.max_epochs=E callbacks.time_budget=null model.compile=...`` (validation on, the
TTA comparison and early stopping off, so every run trains the same E epochs), one run at a
time. Reported per run: every epoch's seconds (train.log, validation included), the steady
epoch time (median of epochs 2..E: epoch 1 holds the first compile), the compile seconds
per epoch that the framework logged, the training minutes and the test accuracy. Variants
alternate eager / compiled, so a drift in the machine's speed hits both.

    python bench/compile.py --epochs 3 --variants "model.compile=false" "model.compile=true"
    python bench/compile.py --minutes 5 --variants "model.compile=auto"   # planned as a real run: auto's trial
    python bench/compile.py --epochs 3 --variants "model.compile=true finetune=staged \\
        finetune.stages=[{epoch:0,unfreeze:0},{epoch:1,unfreeze:0.5},{epoch:2,unfreeze:all}]"
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
from pathlib import Path

from budget import training_minutes
from common import emit, pbc96_cache, run_train

EPOCH = re.compile(r"\] - epoch (\d+)/\d+ .* (\d+) s$")
COMPILED = re.compile(r"torch\.compile: epoch (\d+) spent (\d+) s compiling")


def run_one(overrides: list[str], epochs: int, minutes: float | None, cache: Path) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="compile-"))
    length = (
        [f"trainer.max_epochs={epochs}", "callbacks.time_budget=null"]
        if minutes is None
        else [f"callbacks.time_budget.minutes={minutes:g}"]  # trainer.max_epochs: the config's cap
    )
    no_extras = ["callbacks.early_stopping=null", "callbacks.tta_ensemble=null"]
    _, wall = run_train(cache, run_dir, [*length, *no_extras, *overrides])
    lines = (run_dir / "train.log").read_text().splitlines()
    seconds = [int(m.group(2)) for m in map(EPOCH.search, lines) if m]
    compiling = {int(m.group(1)): int(m.group(2)) for m in map(COMPILED.search, lines) if m}
    decision = next((line.split(" - ", 1)[-1] for line in lines if "model.compile=" in line), "")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "overrides": " ".join(overrides),
        "compile_decision": decision,
        "epoch_s": seconds,
        "steady_epoch_s": statistics.median(seconds[1:]) if len(seconds) > 1 else None,
        "compile_s_by_epoch": compiling,
        "train_min": training_minutes(run_dir),
        "wall_min": round(wall / 60, 2),
        "test_accuracy": round(summary["accuracy"], 4),
        "run_dir": str(run_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--minutes", type=float, help="a time budget instead of --epochs: the config's 30-epoch cap, as real runs plan"
    )
    parser.add_argument("--variants", nargs="+", default=["model.compile=false", "model.compile=true"])
    args = parser.parse_args()
    cache = pbc96_cache()
    rows = []
    for spec in args.variants:
        rows.append(run_one(spec.split(), args.epochs, args.minutes, cache))
        print(f"RESULT {json.dumps(rows[-1])}", flush=True)
    eager = next((r for r in rows if "model.compile=false" in r["overrides"]), None)
    for row in rows:
        if eager and row is not eager and row["steady_epoch_s"]:
            row["steady_speedup_vs_eager"] = round(eager["steady_epoch_s"] / row["steady_epoch_s"], 3)
            row["train_time_ratio_vs_eager"] = round(eager["train_min"] / row["train_min"], 3)
    print(f"{'variant':60s} {'epochs (s)':24s} {'steady s':>8s} {'compile s':>20s} {'train min':>9s} {'test acc':>8s}")
    for row in rows:
        print(
            f"{row['overrides']:60s} {str(row['epoch_s']):24s} {str(row['steady_epoch_s']):>8s} "
            f"{str(row['compile_s_by_epoch']):>20s} {row['train_min']:>9} {row['test_accuracy']:>8}"
        )
    emit({"bench": "compile", "epochs": args.epochs, "minutes": args.minutes, "results": rows})


if __name__ == "__main__":
    main()
