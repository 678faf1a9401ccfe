"""TTA and ensembles on pbc96 (its own leak-free split): accuracy, NLL and prediction speed.

Trains ``--seeds`` lite0 models with the default recipe for ``--epochs`` epochs each (CPU
budget), then scores validation and test once per model with all 8 dihedral views. ``none``
and ``flips`` are subsets of those views (identical to running them alone), so every row
comes from the same forward passes. Temperatures and nothing else are fitted on
validation; test is only scored. Prediction speed (images/s, 2 threads) is timed
separately on the same 512 test images for each TTA, one model vs the ensemble.

    python bench/tta.py --seeds 1 2 --epochs 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import compose_train, emit

from bloodcells.data.readers import read_folder
from bloodcells.inference.checkpoints import load_classifier
from bloodcells.inference.ensembling import evaluate_variant
from bloodcells.inference.predictor import Predictor, Scores
from bloodcells.inference.tta import GEOMETRIC_VIEWS, TTA
from bloodcells.runs.build import build_datamodule
from bloodcells.runs.train import train

DIHEDRAL = GEOMETRIC_VIEWS["dihedral"]
SUBSETS = {name: [DIHEDRAL.index(v) for v in views] for name, views in GEOMETRIC_VIEWS.items()}


def view_subset(scores: Scores, name: str) -> Scores:
    return Scores(scores.logits[:, SUBSETS[name]], scores.targets, scores.index)


def images_per_second(predictor: Predictor, loader, repeats: int = 2) -> float:
    predictor.scores(loader)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        n = len(predictor.scores(loader).targets)
    return n * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared/data/pbc96/train"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--checkpoints", nargs="*", default=[], help="skip training: score these")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "pbc96_bench.npz"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    cache = Path(args.cache)
    if not cache.is_file():
        data = read_folder(args.root)
        np.savez(cache, images=data.images, labels=data.labels)
    common = [
        "data=npz",
        f"data.reader.path={cache}",
        "trainer.enable_progress_bar=false",
        "callbacks.tta_ensemble=null",
    ]
    checkpoints = list(args.checkpoints)
    labels = [f"model {i}" for i in range(len(checkpoints))]
    for seed in [] if checkpoints else args.seeds:
        run_dir = Path(tempfile.mkdtemp(prefix=f"tta-seed{seed}-"))
        cfg = compose_train([*common, f"seed={seed}", f"trainer.max_epochs={args.epochs}"], run_dir)
        metrics = train(cfg)
        print(f"seed {seed}: fit {metrics['fit_seconds'] / 60:.1f} min, plain test accuracy {metrics['accuracy']:.4f}")
        checkpoints.append(metrics["best_checkpoint"])
        labels.append(f"lite0 seed {seed}")
    cfg = compose_train(common, Path(tempfile.mkdtemp(prefix="tta-score-")))
    datamodule = build_datamodule(cfg)
    predictor = Predictor([load_classifier(c) for c in checkpoints], TTA("dihedral"))
    val = predictor.scores(datamodule.val_dataloader())
    test = predictor.scores(datamodule.test_dataloader())
    names = predictor.class_names
    rows = []
    for tta_name in ("none", "flips", "dihedral"):
        v, t = view_subset(val, tta_name), view_subset(test, tta_name)
        tta = TTA(tta_name) if tta_name != "none" else None
        variants = [(label, [i]) for i, label in enumerate(labels)]
        for label, members in [*variants, (f"ensemble of {len(checkpoints)}", list(range(len(checkpoints))))]:
            vs, ts = v.subset(members), t.subset(members)
            kind = (
                ("plain" if tta is None else "tta")
                if len(members) == 1
                else ("ensemble" if tta is None else "ensemble+tta")
            )
            row = evaluate_variant(kind, vs, ts, tta, names, name=label).row
            rows.append({"tta": tta_name, **row})
    test_set = datamodule.dataset("test")
    subset = torch.utils.data.Subset(test_set, range(min(512, len(test_set))))
    loader = datamodule.loader(subset, datamodule.eval_batch_size)
    speed = {}
    for tta_name in ("none", "flips", "dihedral"):
        for label, members in (("one model", predictor.members[:1]), ("ensemble", predictor.members)):
            speed[f"{tta_name}/{label}"] = round(images_per_second(Predictor(members, TTA(tta_name)), loader), 1)
    print(f"\ntest split n={len(test.targets)}; temperatures fitted on validation (n={len(val.targets)})")
    print(
        "| TTA | predictor | accuracy | balanced acc | macro F1 | NLL | NLL (T-scaled) | ECE (T-scaled) "
        "| changed/fixed/broken |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        flips = f"{r['changed']}/{r['fixed']}/{r['broken']}" if "changed" in r else ""
        print(
            f"| {r['tta']} | {r['variant']} | {r['accuracy']:.4f} | {r['balanced_accuracy']:.4f} | "
            f"{r['macro_f1']:.4f} | {r['nll']:.4f} | {r['nll_calibrated']:.4f} | {r['ece_calibrated']:.4f} | {flips} |"
        )
    print("\n| TTA | one model img/s | ensemble img/s |\n|---|---|---|")
    for tta_name in ("none", "flips", "dihedral"):
        print(f"| {tta_name} | {speed[f'{tta_name}/one model']} | {speed[f'{tta_name}/ensemble']} |")
    emit({"bench": "tta", "checkpoints": checkpoints, "rows": rows, "images_per_s": speed})


if __name__ == "__main__":
    main()
