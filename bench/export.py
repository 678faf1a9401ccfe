"""Prediction speed of the exported forms: PyTorch vs ONNX Runtime vs .pt2 (torch.export).

Same lite0 weights, same uint8 N x 96 x 96 x 3 inputs (real pbc96/sample images), 2 threads
everywhere, batch 1 and 64, without TTA and with the 8 dihedral views inside the graph.
Timed in alternating rounds; the median of each is reported with its ratio to PyTorch.

    python bench/export.py [--checkpoint CKPT] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from common import emit

from bloodcells.core.hydra import PROJECT_ROOT, compose_config
from bloodcells.data.readers import read_folder
from bloodcells.inference.checkpoints import load_classifier
from bloodcells.inference.deploy import DeployedPredictor
from bloodcells.inference.predictor import Predictor
from bloodcells.inference.tta import TTA
from bloodcells.runs.build import build_model
from bloodcells.runs.export import export_onnx, export_pt2


def images_per_second(run, batch: np.ndarray, min_seconds: float = 3.0) -> float:
    run(batch)  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        run(batch)
        n += len(batch)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default=None, help="default: lite0 with its ImageNet weights, untrained head")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    if args.checkpoint:
        model = load_classifier(args.checkpoint)
    else:
        model = build_model(compose_config("train", ["model=lite0"], tempfile.mkdtemp())).eval()  # offline weights
    images = read_folder(PROJECT_ROOT / "data" / "sample").images[:64]
    tmp = Path(tempfile.mkdtemp(prefix="export-bench-"))
    rows = []
    for views in ("none", "dihedral"):
        module = DeployedPredictor(Predictor([model], TTA(views))).eval()
        with torch.no_grad():
            session = ort.InferenceSession(str(export_onnx(module, tmp / f"{views}.onnx")), options)
            pt2 = torch.export.load(str(export_pt2(module, tmp / f"{views}.pt2"))).module()

        def run_torch(x, m=module):
            with torch.inference_mode():
                return m(torch.from_numpy(x))

        def run_pt2(x, m=pt2):
            with torch.inference_mode():
                return m(torch.from_numpy(x))

        def run_onnx(x, s=session):
            return s.run(["probs"], {"images": x})[0]

        for batch in (1, 64):
            x = images[:batch]
            timings = {"pytorch": [], "onnxruntime": [], "pt2": []}
            for _ in range(args.rounds):
                for name, fn in (("pytorch", run_torch), ("onnxruntime", run_onnx), ("pt2", run_pt2)):
                    timings[name].append(images_per_second(fn, x))
            med = {k: statistics.median(v) for k, v in timings.items()}
            row = {
                "tta": views,
                "batch": batch,
                **{k: round(v, 1) for k, v in med.items()},
                "onnx_vs_pytorch": round(med["onnxruntime"] / med["pytorch"], 2),
                "pt2_vs_pytorch": round(med["pt2"] / med["pytorch"], 2),
            }
            rows.append(row)
            print(row)
    print("\n| TTA | batch | PyTorch img/s | ONNX Runtime img/s | .pt2 img/s | ONNX / PyTorch | .pt2 / PyTorch |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['tta']} | {r['batch']} | {r['pytorch']} | {r['onnxruntime']} | {r['pt2']} | "
            f"{r['onnx_vs_pytorch']} | {r['pt2_vs_pytorch']} |"
        )
    emit({"bench": "export", "threads": 2, "rows": rows})


if __name__ == "__main__":
    main()
