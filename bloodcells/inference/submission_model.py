"""Course submission: ``Model().predict(X)`` for X uint8 N x H x W x 3 (the course's 96 x 96,
or any size: the graph resizes as training did) -> class indices.

Depends on numpy and onnxruntime only (no torch, no bloodcells). ``model.onnx`` beside this
file holds the whole predictor: normalisation, TTA views, ensemble members, calibration.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent


class Model:
    def __init__(self, batch_size: int = 64) -> None:
        self.session = ort.InferenceSession(str(HERE / "model.onnx"), providers=["CPUExecutionProvider"])
        self.meta = json.loads((HERE / "classes.json").read_text())
        self.batch_size = batch_size

    def run(self, X: np.ndarray, output: str, width: tuple[int, ...]) -> np.ndarray:  # noqa: N803
        X = np.asarray(X)
        if X.dtype != np.uint8 or X.ndim != 4 or X.shape[3] != 3 or min(X.shape[1:3]) < 8:
            raise ValueError(f"expected uint8 N x H x W x 3 (H, W >= 8), got {X.dtype} {X.shape}")
        out = [
            self.session.run([output], {"images": X[i : i + self.batch_size]})[0]
            for i in range(0, len(X), self.batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, *width), np.float32)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:  # noqa: N803 (the course's name)
        return self.run(X, "probs", (len(self.meta["class_names"]),))

    def ood_score(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        """Foreign-image score per image: > 1 means not a cell like the training cells."""
        if not self.meta.get("ood_score"):
            raise ValueError("this model was exported without a foreign-image score")
        return self.run(X, "ood_score", ())

    def predict(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        return self.predict_proba(X).argmax(axis=1)
