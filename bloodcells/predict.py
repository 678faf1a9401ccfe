"""Predict classes for new images: ``python -m bloodcells.predict ckpt_path=... input=...``.

``input`` is an npz (``images``, or MedMNIST's ``test_images``), a folder (searched
recursively) or one image file. The CSV has the source (file or npz index), the predicted
class name and one probability column per class.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from bloodcells.config import CONFIG_DIR, user_errors
from bloodcells.data.readers import read_unlabelled
from bloodcells.data.transforms import build_pipeline, to_tensor
from bloodcells.checkpoints import load_classifier
from bloodcells.models.module import CellClassifier
from bloodcells.reports import write_predictions


@torch.inference_mode()
def predict_images(model: CellClassifier, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Class probabilities (N x classes) for uint8 HWC images, through the eval pipeline."""
    pipeline = build_pipeline([], model.hparams.image_size)
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([to_tensor(pipeline(image=im)["image"]) for im in images[start : start + batch_size]])
        out.append(model(batch.to(model.device)).float().softmax(dim=1).cpu())
    return torch.cat(out).numpy()


def predict(cfg: DictConfig) -> Path:
    model = load_classifier(cfg.ckpt_path)
    images, sources = read_unlabelled(cfg.input, image_size=model.hparams.image_size)
    probs = predict_images(model, images, cfg.batch_size)
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_predictions(out, sources, probs, model.class_names)
    counts = np.bincount(probs.argmax(1), minlength=len(model.class_names))
    print(f"{len(images)} images -> {out}")
    print("predicted: " + "  ".join(f"{c} {n}" for c, n in zip(model.class_names, counts)))
    return out


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    with user_errors():
        predict(cfg)


if __name__ == "__main__":
    main()
