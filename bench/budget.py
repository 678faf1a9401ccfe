"""Accuracy under a fixed wall-clock budget: lite0 on pbc96 with its own stratified split.

Each variant trains for ``--minutes`` (Lightning ``max_time``), then the best checkpoint
(val balanced accuracy) is tested on the same held-out test split. Prints one line per
variant and a final JSON line with all of them.

    python bench/budget.py --variants "aug=none" "aug=standard" --minutes 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import compose_train, emit

from bloodcells.data.readers import read_folder
from bloodcells.train import train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared/data/pbc96/train"))
    parser.add_argument("--variants", nargs="+", default=["finetune=full aug=standard"])
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument(
        "--batches-per-epoch", type=int, default=60, help="limit_train_batches: short epochs so stages happen"
    )
    parser.add_argument(
        "--common", default="model=lite0 sched=cosine trainer.max_epochs=40 callbacks.early_stopping=null"
    )
    args = parser.parse_args()
    cache = Path(tempfile.gettempdir()) / "pbc96_bench.npz"
    if not cache.is_file():
        data = read_folder(args.root)
        np.savez(cache, images=data.images, labels=data.labels)
    seconds = int(args.minutes * 60)
    budget = f"00:00:{seconds // 60:02d}:{seconds % 60:02d}"
    results = []
    for variant in args.variants:
        run_dir = Path(tempfile.mkdtemp(prefix="budget-"))
        overrides = [
            "data=npz",
            f"data.reader.path={cache}",
            "trainer.enable_progress_bar=false",
            f"+trainer.max_time={budget}",
            f"+trainer.limit_train_batches={args.batches_per_epoch}",
            *args.common.split(),
            *variant.split(),
        ]
        cfg = compose_train(overrides, run_dir)
        start = time.perf_counter()
        metrics = train(cfg)
        row = {
            "variant": variant,
            "accuracy": round(metrics["accuracy"], 4),
            "macro_f1": round(metrics["macro_f1"], 4),
            "balanced_accuracy": round(metrics["balanced_accuracy"], 4),
            "fit_s": round(metrics["fit_seconds"], 1),
            "total_s": round(time.perf_counter() - start, 1),
            "n_test": metrics["n"],
            "best_checkpoint": Path(metrics["best_checkpoint"]).name,
        }
        print(f"RESULT {row}", flush=True)
        results.append(row)
    emit(
        {
            "bench": "budget",
            "minutes": args.minutes,
            "batches_per_epoch": args.batches_per_epoch,
            "common": args.common,
            "results": results,
        }
    )


if __name__ == "__main__":
    main()
