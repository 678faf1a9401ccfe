"""The best checkpoint by validation against the last one, on the test split of finished runs.

A time-budgeted run ends its cosine at the deadline, and ``train`` tests the checkpoint
with the best validation balanced accuracy (``callbacks.model_checkpoint``). Where that is
not the last epoch, this scores both on the run's own test split with the evaluate CLI,
``python -m bloodcells.evaluate ckpt_path=... data=npz data.reader.path=<pbc96 cache>
tta=none|dihedral``, one run dir after another (``bench/budget.py`` leaves them in the
temp folder; its ``budget.jsonl`` names them). The best checkpoint's scores are the
baseline of the same invocation; the run's own figures (``comparison.csv``) are printed
beside them as a check that evaluate reproduces what train reported. Where the best
checkpoint is the last one (the same optimizer step) it is scored once.

    python bench/last_vs_best.py /tmp/budget-30min-*
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import emit, pbc96_cache

TTAS = ("none", "dihedral")


def score(ckpt: Path, tta: str, cache: Path) -> dict:
    """Test accuracy, balanced accuracy and correct count of ``ckpt`` with ``tta``, through the CLI."""
    out = Path(tempfile.mkdtemp(prefix="last-vs-best-"))
    command = [
        sys.executable,
        "-m",
        "bloodcells.evaluate",
        f"ckpt_path={ckpt}",
        "data=npz",
        f"data.reader.path={cache}",
        f"tta={tta}",
        f"hydra.run.dir={out}",
    ]
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"evaluate failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    return {
        "accuracy": round(metrics["accuracy"], 4),
        "balanced_accuracy": round(metrics["balanced_accuracy"], 4),
        "correct": round(metrics["accuracy"] * metrics["n"]),
        "n": metrics["n"],
    }


def reported(run_dir: Path) -> dict[str, float]:
    """What the run itself reported for its best checkpoint: plain and TTA test accuracy."""
    with open(run_dir / "comparison.csv") as f:
        rows = {row["variant"].split(" ")[0]: row for row in csv.DictReader(f)}
    return {"none": round(float(rows["plain"]["accuracy"]), 4), "dihedral": round(float(rows["tta"]["accuracy"]), 4)}


def global_step(ckpt: Path) -> int:
    """The optimizer step a checkpoint was written at: the best one is often the last too."""
    import torch

    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])


def compare(run_dir: Path, cache: Path) -> dict | None:
    summary = json.loads((run_dir / "summary.json").read_text())
    best, last = Path(summary["best_checkpoint"]), run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file() or not best.is_file():
        print(f"{run_dir}: no best and last checkpoint to compare; skipped", flush=True)
        return None
    row = {"run_dir": str(run_dir), "best": best.name, "reported": reported(run_dir)}
    best_is_last = global_step(best) == global_step(last)
    for tta in TTAS:
        row[f"best_{tta}"] = score(best, tta, cache)
        row[f"last_{tta}"] = row[f"best_{tta}"] if best_is_last else score(last, tta, cache)
        gain = row[f"last_{tta}"]["correct"] - row[f"best_{tta}"]["correct"]
        print(
            f"{run_dir.name} tta={tta}: best ({best.name}) {row[f'best_{tta}']['accuracy']:.4f}"
            f" (run reported {row['reported'][tta]:.4f}), last {row[f'last_{tta}']['accuracy']:.4f},"
            f" last - best = {gain:+d} test images",
            flush=True,
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    cache = pbc96_cache()
    rows = [row for run_dir in args.run_dirs if (row := compare(run_dir, cache)) is not None]
    totals = {tta: sum(r[f"last_{tta}"]["correct"] - r[f"best_{tta}"]["correct"] for r in rows) for tta in TTAS}
    print(f"over {len(rows)} runs, last - best: {totals['none']:+d} images plain, {totals['dihedral']:+d} with TTA")
    emit({"bench": "last_vs_best", "runs": rows, "last_minus_best_images": totals})


if __name__ == "__main__":
    main()
