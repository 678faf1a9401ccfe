"""Robustness beyond one laboratory: accuracy on pbc96's own test split and on every shift of
the suite, per model, without and with test-time adaptation (adapt=bn, adapt=tent with its
default settings), in one run.

Train the models with the CLI under the same budget, then pass their checkpoints, e.g.:

    python -m bloodcells.train data=folder data.reader.root=../shared/data/pbc96/train \
        callbacks.time_budget.minutes=8 callbacks.tta_ensemble=null task_name=shift_default
    python -m bloodcells.train ... aug=robust task_name=shift_robust
    python bench/shifts.py --model default=CKPT_A --model robust=CKPT_B
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import emit

from bloodcells.core.hydra import compose_config
from bloodcells.data.shifts import SHIFTS
from bloodcells.inference.ensemble_file import load_predictor
from bloodcells.inference.tta import TTA
from bloodcells.runs.evaluate import datamodule_for, shift_suite


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT (repeat)")
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared/data/pbc96/train"))
    parser.add_argument("--limit", type=int, default=None, help="score N test images, evenly spaced")
    parser.add_argument("--adapt", default="none,bn,tent", help="comma-separated: none, bn, tent")
    args = parser.parse_args()
    torch.set_num_threads(2)
    table: dict[str, dict[str, float]] = {}
    for spec in args.model:
        name, ckpt = spec.split("=", 1)
        overrides = [f"ckpt_path={ckpt}", "data=folder", f"data.reader.root={args.root}"]
        cfg = compose_config("evaluate", [*overrides, "data.reader.cache_dir=null"], "/tmp/bench-shifts")
        predictor = load_predictor(ckpt, TTA("none"))
        datamodule = datamodule_for(predictor, cfg)  # the checkpoint's own test split
        for adapt in args.adapt.split(","):
            test = datamodule.splits["test"]  # sorted by class: a subset is taken evenly spaced, every class in it
            if args.limit:
                test = test[np.linspace(0, len(test) - 1, min(args.limit, len(test))).astype(int)]
            rows = shift_suite(predictor, adapt, datamodule, test, 128)
            table[f"{name}/adapt={adapt}"] = {r["shift"]: round(r["accuracy"], 4) for r in rows}
            print(f"{name} adapt={adapt}: " + "  ".join(f"{r['shift']} {r['accuracy']:.4f}" for r in rows), flush=True)
    columns = list(table)
    print("\n| shift | " + " | ".join(columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for shift in ("none", *SHIFTS):
        print(f"| {shift} | " + " | ".join(f"{table[c][shift]:.4f}" for c in columns) + " |")
    means = {c: round(sum(v for k, v in table[c].items() if k != "none") / len(SHIFTS), 4) for c in columns}
    print("| mean over shifts | " + " | ".join(f"{means[c]:.4f}" for c in columns) + " |")
    emit({"bench": "shifts", "test_images": args.limit or "all", "accuracy": table, "mean_over_shifts": means})


if __name__ == "__main__":
    main()
