"""Knowing what it does not know, on pbc96's own split: foreign-image AUROC and false-accept
rate per kind for every score, and conformal coverage / set size over random re-splits.

Train a model with the CLI first (its TTA callback stores the foreign-image score and the
validation probabilities conformal sets are fitted on), then:

    python bench/uncertainty.py --ckpt outputs/train/runs/<time>/checkpoints/epochXXX.ckpt

The foreign suite here is made from the *test* cells (the model chose its score on one made
from validation cells), plus two kinds that played no part in the choice: crops of
matplotlib's logo image and smooth colour ramps. Conformal: the stored validation
probabilities and the test probabilities are pooled and re-split 20 times into calibration
and test sets of the original sizes (the same TTA and temperature).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np
import torch
from common import emit
from PIL import Image

from bloodcells.core.hydra import compose_config
from bloodcells.data.datamodule import array_loader
from bloodcells.data.foreign import foreign_suite
from bloodcells.data.shifts import SHIFTS, shifted
from bloodcells.inference.conformal import ConformalSets, set_metrics, share_at_accuracy
from bloodcells.inference.ensemble_file import load_predictor
from bloodcells.inference.ood import StatsScorer, fit_ood, foreign_rates, look
from bloodcells.inference.predictor import Predictor
from bloodcells.runs.evaluate import datamodule_for


def held_out_kinds(cells: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Foreign kinds the score was not chosen on."""
    rng = np.random.default_rng(seed)
    size = cells.shape[1]
    logo = np.asarray(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "logo2.png").convert("RGB"))
    crops = []
    for _ in range(len(cells)):
        h, w = logo.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w)))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crops.append(np.asarray(Image.fromarray(logo[y : y + side, x : x + side]).resize((size, size))))
    t = np.linspace(0, 1, size)
    ramps = []
    for _ in range(len(cells)):
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        angle = rng.uniform(0, np.pi)
        ramp = np.cos(angle) * t[None, :] + np.sin(angle) * t[:, None]
        ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-9)
        ramps.append((a + (b - a) * ramp[..., None]).astype(np.uint8))
    return {"logo (held out)": np.stack(crops), "colour ramp (held out)": np.stack(ramps)}


def foreign_table(predictor: Predictor, candidates: dict, test_cells: np.ndarray, suite: dict) -> dict:
    """Each candidate's AUROC and false-accept rate per kind; every image set goes through the
    network once (identity view), the candidates score its features."""
    model = predictor.members[0]
    inside = look(model, array_loader(test_cells, 128))
    seen = {kind: look(model, array_loader(x, 128)) for kind, x in suite.items()}
    rows = {}
    for name, scorer in candidates.items():
        on_stats = StatsScorer(scorer.method, scorer.threshold, dict(scorer.named_buffers()), scorer.k, scorer.pixels)
        rows[name] = foreign_rates(on_stats.on(inside).numpy(), {k: on_stats.on(v).numpy() for k, v in seen.items()})
    return rows


def conformal_table(val_probs, val_targets, test_probs, test_targets, names, splits: int = 20) -> list[dict]:
    probs, targets = torch.cat([val_probs, test_probs]), torch.cat([val_targets, test_targets])
    n_cal = len(val_targets)
    rows = []
    for alpha in (0.05, 0.01):
        for score in ("lac", "aps", "raps"):
            for conditional in (False, True):
                measured = []
                for r in range(splits):
                    perm = torch.randperm(len(targets), generator=torch.Generator().manual_seed(r))
                    cal, test = perm[:n_cal], perm[n_cal:]
                    sets = ConformalSets.fit(probs[cal], targets[cal], alpha, score, conditional).sets(probs[test])
                    measured.append(set_metrics(sets, targets[test], names))
                per_class = np.mean([[m["coverage_per_class"][c] for c in names] for m in measured], axis=0)
                rows.append(
                    {
                        "alpha": alpha,
                        "score": score,
                        "class_conditional": conditional,
                        "coverage": float(np.mean([m["coverage"] for m in measured])),
                        "lowest_class_coverage": float(per_class.min()),
                        "mean_set_size": float(np.mean([m["mean_set_size"] for m in measured])),
                        "singletons": float(np.mean([m["singleton_share"] for m in measured])),
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared/data/pbc96/train"))
    parser.add_argument("--suite", type=int, default=512, help="test cells the foreign suite is made from")
    args = parser.parse_args()
    torch.set_num_threads(2)
    overrides = [f"ckpt_path={args.ckpt}", "data=folder", f"data.reader.root={args.root}"]
    cfg = compose_config("evaluate", overrides, "/tmp/bench-uncertainty")
    predictor = load_predictor(args.ckpt)  # the stored TTA and temperature
    datamodule = datamodule_for(predictor, cfg)
    names = predictor.class_names
    model = predictor.members[0]
    val_index = datamodule.splits["val"]
    val_rows = val_index[np.linspace(0, len(val_index) - 1, min(len(val_index), args.suite)).astype(int)]
    fitted = fit_ood(
        model,
        datamodule.loader(datamodule.dataset("train"), 128),
        datamodule.val_dataloader(),
        datamodule.eval_images(val_rows),
        128,
        datamodule.seed,
    )
    print("validation AUROC per candidate (the choice):")
    for row in fitted.comparison:
        print("  " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else str(v) for k, v in row.items()))
    test_index = datamodule.splits["test"]
    test_cells = datamodule.eval_images(test_index)
    rows = test_index[np.linspace(0, len(test_index) - 1, min(len(test_index), args.suite)).astype(int)]
    suite_cells = datamodule.eval_images(rows)
    suite = {**foreign_suite(suite_cells, seed=1), **held_out_kinds(suite_cells, seed=1)}
    table = foreign_table(predictor, fitted.candidates, test_cells, suite)
    kinds = list(suite)
    print("\n| score | " + " | ".join(kinds) + " | cells accepted |")
    print("| --- |" + " --- |" * (len(kinds) + 1))
    for name, rates in table.items():
        cells = f"{rates[-1]['false_accept']:.3f}"
        print(
            f"| {name} | "
            + " | ".join(f"{r['auroc']:.4f} / {r['false_accept']:.3f}" for r in rates[:-1])
            + f" | {cells} |"
        )
    print("(AUROC / share of foreign images accepted at the threshold that accepts 95% of validation cells)")
    chosen = fitted.best
    on_stats = StatsScorer(chosen.method, chosen.threshold, dict(chosen.named_buffers()), chosen.k, chosen.pixels)
    shifted_share = {}
    for name in SHIFTS:  # cells as another laboratory might photograph them: how many still pass as cells
        seen = look(model, array_loader(shifted(suite_cells, name), 128))
        shifted_share[name] = float((on_stats.on(seen) <= 1).float().mean())
    print("\nshare of shifted test cells accepted as cells (chosen score):")
    print("  " + "  ".join(f"{k} {v:.3f}" for k, v in shifted_share.items()))
    model.ood = fitted.best
    stored = predictor.calibration_set
    if stored is None:
        raise SystemExit(f"{args.ckpt} stores no conformal calibration for TTA {predictor.tta.key}")
    test = predictor.predict(datamodule.test_dataloader())
    conformal = conformal_table(
        torch.as_tensor(stored["probs"]), torch.as_tensor(stored["targets"]), test["probs"], test["targets"], names
    )
    print(f"\nconformal sets, mean over 20 re-splits (TTA {predictor.tta.key}):")
    print("| alpha | score | class-conditional | coverage | lowest class | mean set size | singletons |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in conformal:
        print(
            f"| {r['alpha']} | {r['score']} | {r['class_conditional']} | {r['coverage']:.4f} | "
            f"{r['lowest_class_coverage']:.4f} | {r['mean_set_size']:.3f} | {r['singletons']:.3f} |"
        )
    accepted = share_at_accuracy(test["probs"], test["targets"], 0.995)
    accuracy = float((test["probs"].argmax(1) == test["targets"]).float().mean())
    print(f"\ntest accuracy {accuracy:.4f}; accepting the most confident {accepted:.1%} gives 99.5% accuracy")
    emit(
        {
            "bench": "uncertainty",
            "ckpt": args.ckpt,
            "chosen": fitted.best.method + ("+pixels" if fitted.best.pixels else ""),
            "foreign": {
                n: {r["kind"]: [round(r["auroc"], 4), round(r["false_accept"], 4)] for r in t} for n, t in table.items()
            },
            "conformal": conformal,
            "accuracy": accuracy,
            "share_at_99.5": accepted,
            "shifted_accepted": shifted_share,
        }
    )


if __name__ == "__main__":
    main()
