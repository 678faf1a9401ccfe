"""One resize policy, measured: a model trained at 128 px on 96-px PBC cells scores its own
held-out test cells the same whichever way they arrive.

Paths, in the same run, on the checkpoint's test split of pbc96:
- ``folder``: the folder reader resizes at read time (how training saw the cells);
- ``npz``: the same cells as a 96-px npz, resized by the evaluation pipeline (what
  ``evaluate data=npz`` and ``predict`` do now: the same function);
- baselines, the two resizes the project used elsewhere before: cv2 bilinear (the old
  ``A.Resize`` in the pipeline) and torch's antialiased bilinear (the old predictor resize).

    python bench/resize_paths.py --checkpoint outputs/cpu_30min/runs/RUN/checkpoints/epochNNN.ckpt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from common import emit

from bloodcells.core.hydra import compose_config
from bloodcells.data.datamodule import array_loader
from bloodcells.data.readers import read_folder
from bloodcells.inference.ensemble_file import load_predictor
from bloodcells.inference.tta import TTA
from bloodcells.runs.evaluate import datamodule_for


def accuracy(probs: torch.Tensor, labels: np.ndarray) -> float:
    return float((probs.argmax(1).numpy() == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared/data/pbc96/train"))
    parser.add_argument("--tta", default="dihedral")
    args = parser.parse_args()
    torch.set_num_threads(2)
    overrides = [f"ckpt_path={args.checkpoint}", "data=folder", f"data.reader.root={args.root}"]
    cfg = compose_config("evaluate", [*overrides, "data.reader.cache_dir=null"], "/tmp/resize-paths")
    plain = load_predictor(args.checkpoint, TTA("none"))
    size = plain.image_size
    datamodule = datamodule_for(plain, cfg)  # the checkpoint's own split, read at `size` by the reader
    test = datamodule.splits["test"]
    labels = datamodule.data.labels[test]
    native = read_folder(args.root).images[test]  # the same cells at 96 px, as an npz would hold them
    views = {
        "folder": datamodule.data.images[test],
        "npz": np.stack([datamodule.eval_pipeline(image=a)["image"] for a in native]),
        "cv2_bilinear": np.stack([A.Resize(size, size)(image=a)["image"] for a in native]),
        "torch_bilinear_aa": F.interpolate(
            torch.from_numpy(native).permute(0, 3, 1, 2).float(), size=(size, size), mode="bilinear", antialias=True
        )
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
        .permute(0, 2, 3, 1)
        .numpy(),
    }
    result = {"bench": "resize_paths", "checkpoint": args.checkpoint, "image_size": size, "n": int(len(test))}
    probs = {}
    for name, images in views.items():
        probs[name] = plain.predict(array_loader(images, 128))["probs"]
        result[f"{name}_acc"] = round(accuracy(probs[name], labels), 4)
        print(f"{name}: plain {result[f'{name}_acc']:.4f}", flush=True)
    result["npz_equals_folder_top1"] = bool(torch.equal(probs["npz"].argmax(1), probs["folder"].argmax(1)))
    result["npz_minus_folder_max_prob"] = float((probs["npz"] - probs["folder"]).abs().max())
    with_tta = load_predictor(args.checkpoint, TTA(args.tta))
    for name in ("folder", "npz", "cv2_bilinear"):
        p = with_tta.predict(array_loader(views[name], 128))["probs"]
        result[f"{name}_tta_acc"] = round(accuracy(p, labels), 4)
        print(f"{name}: {args.tta} {result[f'{name}_tta_acc']:.4f}", flush=True)
    emit(result)


if __name__ == "__main__":
    main()
