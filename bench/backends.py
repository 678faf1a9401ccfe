"""Scoring speed of the two inference backends on the same predictor: torch (eager) vs ONNX
Runtime (the member graph exported once and cached), images/s for plain and dihedral TTA at
96 and 128 px, lite0 on real cells; also the one-off export time and the largest probability
difference between the backends. Same run, same images: the ratio is the figure.

    python bench/backends.py [--n 512]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import emit

from bloodcells.core.hydra import PROJECT_ROOT, compose_config
from bloodcells.data.datamodule import array_loader
from bloodcells.data.readers import read_folder
from bloodcells.inference.checkpoints import load_classifier
from bloodcells.inference.predictor import Predictor
from bloodcells.inference.tta import TTA
from bloodcells.runs.build import build_model


def timed(predictor: Predictor, images: np.ndarray) -> tuple[float, torch.Tensor]:
    loader = array_loader(images, 128)
    start = time.perf_counter()
    probs = predictor.predict(loader)["probs"]
    return len(images) / (time.perf_counter() - start), probs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = read_folder(PROJECT_ROOT / "data" / "sample")
    images = np.asarray(data.images[np.linspace(0, len(data) - 1, args.n).astype(int) % len(data)])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (96, 128):
            cfg = compose_config("train", [f"data.image_size={size}"], tmp)
            built = build_model(cfg)
            ckpt = Path(tmp) / f"lite0_{size}.ckpt"
            torch.save({"state_dict": built.state_dict(), "hyper_parameters": dict(built.hparams)}, ckpt)
            model = load_classifier(ckpt)
            for views in ("none", "dihedral"):
                tta = TTA(views)
                eager, reference = timed(Predictor([model], tta), images)
                start = time.perf_counter()
                timed(Predictor([model], tta, backend="onnxruntime"), images[:2])  # export + first session
                export_s = time.perf_counter() - start
                ort, probs = timed(Predictor([model], tta, backend="onnxruntime"), images)
                row = {
                    "size": size,
                    "tta": views,
                    "torch_img_s": round(eager, 1),
                    "onnxruntime_img_s": round(ort, 1),
                    "speedup": round(ort / eager, 2),
                    "export_s": round(export_s, 1),
                    "max_prob_diff": float((probs - reference).abs().max()),
                    "top1_equal": bool(torch.equal(probs.argmax(1), reference.argmax(1))),
                }
                rows.append(row)
                print(row, flush=True)
    print("\n| size | TTA | torch img/s | ONNX Runtime img/s | speed-up | export (once) | max prob diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['size']} | {r['tta']} | {r['torch_img_s']} | {r['onnxruntime_img_s']} | {r['speedup']}x | "
            f"{r['export_s']} s | {r['max_prob_diff']:.1e} |"
        )
    emit({"bench": "backends", "images": args.n, "rows": rows})


if __name__ == "__main__":
    main()
