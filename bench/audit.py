"""The label audit on pbc96: plant label flips into 2% of the images (seeded), audit, and
report precision and recall of the flagged images against the planted ones, the agreement
with cleanlab's own filters, and a gallery of the top suspects among the real labels.

    python bench/audit.py [--ckpt CKPT] [--folds 5]

Features come from lite0's pretrained ImageNet weights (the audit's default), or from a
trained checkpoint's backbone with ``--ckpt`` (a model trained on *these* labels has seen
the flips; one trained on the unflipped labels flatters the audit: say which).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import emit

from bloodcells.cleaning.label_audit import confident_learning, cross_fit, ranked
from bloodcells.core.hydra import compose_config
from bloodcells.inference.checkpoints import load_classifier
from bloodcells.reporting.gradcam import cam_figure
from bloodcells.runs.audit import fold_cams, pooled_features
from bloodcells.runs.build import build_datamodule, build_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared/data/pbc96/train"))
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--share", type=float, default=0.02)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "outputs" / "bench" / "audit"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = compose_config("audit", ["data=folder", f"data.reader.root={args.root}"], "/tmp/bench-audit")
    model = load_classifier(args.ckpt) if args.ckpt else build_model(cfg)
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    names = list(datamodule.class_names)
    index = datamodule.splits["all"]
    images = datamodule.eval_images(index)
    truth = datamodule.data.labels[index]
    rng = np.random.default_rng(0)
    planted = rng.choice(len(truth), int(round(args.share * len(truth))), replace=False)
    given = truth.copy()
    given[planted] = (truth[planted] + rng.integers(1, len(names), len(planted))) % len(names)
    start = time.perf_counter()
    feats = pooled_features(model, images)
    feature_s = time.perf_counter() - start
    probs, fold, heads = cross_fit(feats, given, len(names), args.folds, seed=0)
    fit_s = time.perf_counter() - start - feature_s
    found = confident_learning(given, probs)
    flagged = np.flatnonzero(found["is_issue"])
    hits = np.intersect1d(flagged, planted)
    precision, recall = len(hits) / max(1, len(flagged)), len(hits) / len(planted)
    suggested_right = float((found["suggested"][hits] == truth[hits]).mean()) if len(hits) else 0.0
    print(
        f"{len(truth)} images, {len(planted)} labels flipped ({args.share:.0%}); features from "
        f"{args.ckpt or cfg.model.backbone + ' (ImageNet)'} in {feature_s:.0f} s, {args.folds}-fold fit {fit_s:.0f} s"
    )
    print(f"out-of-fold accuracy against the given labels {float((probs.argmax(1) == given).mean()):.4f}")
    print(
        f"flagged {len(flagged)}: precision {precision:.3f}, recall {recall:.3f}; suggested label right for "
        f"{suggested_right:.1%} of the found flips"
    )
    agreement = {}
    try:
        from cleanlab.filter import find_label_issues

        for how in ("confident_learning", "prune_by_noise_rate"):
            theirs = find_label_issues(given, probs, filter_by=how)
            both = int((theirs & found["is_issue"]).sum())
            union = int((theirs | found["is_issue"]).sum())
            theirs_hits = len(np.intersect1d(np.flatnonzero(theirs), planted))
            agreement[how] = {
                "jaccard": both / max(1, union),
                "flagged": int(theirs.sum()),
                "precision": theirs_hits / max(1, int(theirs.sum())),
                "recall": theirs_hits / len(planted),
            }
            print(
                f"cleanlab {how}: flags {int(theirs.sum())}, Jaccard with ours {both / max(1, union):.3f}, "
                f"precision {agreement[how]['precision']:.3f}, recall {agreement[how]['recall']:.3f}"
            )
    except ImportError:
        print("cleanlab not installed: no agreement figures")
    real = [i for i in ranked(found) if found["is_issue"][i] and i not in set(planted.tolist())][:30]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if real:
        cams = fold_cams(model, heads, fold, images, real, found["suggested"][real])
        captions = [
            f"{names[given[i]][:7]}->{names[found['suggested'][i]][:7]} {found['self_confidence'][i]:.2f}" for i in real
        ]
        cam_figure(out / "real_suspects.png", images[real], cams, captions, "top 30 suspects among the real labels")
        print(f"gallery of the top {len(real)} real (unplanted) suspects: {out / 'real_suspects.png'}")
    emit(
        {
            "bench": "audit",
            "features": args.ckpt or "imagenet",
            "planted": len(planted),
            "flagged": len(flagged),
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "cleanlab": agreement,
        }
    )


if __name__ == "__main__":
    main()
