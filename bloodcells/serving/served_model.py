"""What the page shows for a set of uploaded images: ``predict``'s scores, prediction sets
and foreign-image flag, the Grad-CAM overlay of each image, and ``predict``'s CSV, computed
by the same functions ``predict`` calls. One request at a time uses the model (Grad-CAM
hooks the network, so two requests at once would read each other's activations); under
``serve`` the work runs on the main thread, not the request's (see ``run_jobs_forever``)."""

from __future__ import annotations

import base64
import io
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bloodcells.inference.prediction import predict_images
from bloodcells.inference.predictor import Predictor
from bloodcells.reporting.gradcam import cams_for, default_layer, overlay
from bloodcells.reporting.model_card import run_file, run_metrics
from bloodcells.reporting.outputs import csv_text, prediction_rows
from bloodcells.serving.uploads import DecodedUploads


@dataclass
class Limits:
    """What one request may hold; larger requests are refused with a message."""

    max_upload_mb: float = 64.0
    max_files: int = 500
    max_pixels: int = 40_000_000


def png_data_url(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def row_result(header: list[str], row: list[str], class_names: list[str]) -> dict:
    """One CSV row of ``predict`` as the page shows it (the page shows what the CSV says)."""
    cells = dict(zip(header, row))
    flag = {"True": True, "False": False}
    return {
        "source": cells["source"],
        "pred": cells["pred"],
        "probs": {c: float(cells[f"p_{c}"]) for c in class_names},
        "prediction_set": None
        if "prediction_set" not in cells
        else [c for c in cells["prediction_set"].split("|") if c],
        "ood_score": float(cells["ood_score"]) if "ood_score" in cells else None,
        "in_distribution": flag.get(cells.get("in_distribution", "")),
        "abstain": flag.get(cells.get("abstain", "")),
    }


class ServedModel:
    """A loaded predictor with the settings ``predict`` would use for it."""

    def __init__(
        self,
        predictor: Predictor,
        ckpt_path: str,
        conformal: dict,
        batch_size: int = 128,
        backend: str = "auto",
        device: torch.device | None = None,
        gradcam: bool = True,
    ) -> None:
        self.predictor = predictor
        self.ckpt_path = str(ckpt_path)
        self.conformal = dict(conformal)
        self.batch_size = batch_size
        self.backend = backend
        self.device = device or torch.device("cpu")
        self.cam_layer = default_layer(predictor.members[0].backbone) if gradcam else None
        self.lock = threading.Lock()
        self.jobs: queue.Queue | None = None
        self.metrics, self.metrics_from = run_metrics(ckpt_path)
        self.report: Path | None = run_file(ckpt_path, "report.html")

    def info(self) -> dict:
        """What the page says about the model it serves."""
        p = self.predictor
        metrics = (self.metrics or {}).get("metrics", {})
        return {
            "checkpoint": self.ckpt_path,
            "members": [
                {
                    "backbone": m.hparams.backbone,
                    "image_size": m.hparams.image_size,
                    "stain_norm": m.hparams.get("stain_norm", "none"),
                }
                for m in p.members
            ],
            "image_size": p.image_size,
            "tta": p.tta.key,
            "temperature": round(float(p.temperature), 4),
            "classes": list(p.class_names),
            "conformal": None if p.calibration_set is None else self.conformal,
            "foreign_score": [None if m.ood is None else m.ood.name for m in p.members],
            "gradcam_layer": self.cam_layer,
            "metrics": {k: metrics[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1") if k in metrics},
            "metrics_from": self.metrics_from.replace("`", ""),
            "report": "/report" if self.report else None,
        }

    def score(self, uploads: DecodedUploads) -> dict:
        """The page's answer for decoded uploads: one result per readable image, the errors,
        and the CSV ``predict`` writes for the same files."""
        prediction, cams = self.on_model_thread(self.scores_and_maps, uploads.images)
        names = list(self.predictor.class_names)
        header, *rows = prediction_rows(
            uploads.sources, prediction.probs, names, sets=prediction.sets, ood=prediction.ood
        )
        return {
            "results": [
                {**row_result(header, row, names), "image": png_data_url(image), "gradcam": cam}
                for row, image, cam in zip(rows, uploads.images, cams)
            ],
            "errors": uploads.errors,
            "csv": csv_text([header, *rows]),
        }

    def scores_and_maps(self, images: np.ndarray) -> tuple:
        prediction = predict_images(self.predictor, images, self.conformal, self.batch_size, self.backend, self.device)
        return prediction, self.overlays(images, prediction.probs.argmax(1))

    def on_model_thread(self, work: Callable, *args):
        """``work(*args)`` one at a time: on the thread in ``run_jobs_forever`` when one runs
        there, else here under the lock."""
        if self.jobs is None:
            with self.lock:
                return work(*args)
        done: Future = Future()
        self.jobs.put((work, args, done))
        return done.result()

    def run_jobs_forever(self) -> None:
        """Run every request's model work on this thread (``serve``: the main thread). PyTorch
        on CPU scores one image 2.3x slower from a request thread than from the main thread
        (the OpenMP teams of two threads on the same cores; measured, bench/serve.py)."""
        self.jobs = queue.Queue()
        while True:
            try:
                work, args, done = self.jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                done.set_result(work(*args))
            except Exception as err:  # the request answers 500 with it; the loop goes on
                done.set_exception(err)

    def overlays(self, images: np.ndarray, classes: np.ndarray) -> list[str | None]:
        if self.cam_layer is None:
            return [None] * len(images)
        cams = cams_for(self.predictor.members[0], images, classes, self.cam_layer)
        return [png_data_url(overlay(image, cam)) for image, cam in zip(images, cams)]
