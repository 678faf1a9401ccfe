"""Grad-CAM explanations: ``python -m bloodcells.explain ckpt_path=... [input=...|data=... split=test]``.

With ``input`` (npz, folder or file, unlabelled) it draws a grid of a few images per
predicted class; without, it takes the configured data split, draws a few images per true
class and a gallery of the misclassified ones (true -> predicted, probability). Maps are for
the predicted class, at the layer ``layer`` (default: the last stride-16 stage).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from bloodcells.core.errors import check_choice, check_positive
from bloodcells.data.datamodule import array_loader
from bloodcells.data.readers import read_unlabelled
from bloodcells.inference.checkpoints import load_classifier
from bloodcells.inference.onnx_backend import resolve_backend
from bloodcells.inference.predictor import Predictor, resolve_device
from bloodcells.reporting.gradcam import explanation_figures
from bloodcells.runs.evaluate import SPLITS, datamodule_for


def explain(cfg: DictConfig) -> dict[str, str]:
    check_positive("per_class", cfg.per_class)
    model = load_classifier(cfg.ckpt_path, resolve_device(cfg.get("device", "auto")))
    predictor = Predictor([model])
    if cfg.get("input"):
        images, _ = read_unlabelled(cfg.input, image_size=model.hparams.image_size)
        labels = None
    else:
        check_choice("split", cfg.split, SPLITS)
        datamodule = datamodule_for(predictor, cfg)
        index = datamodule.dataset(cfg.split).index
        images, labels = datamodule.data.images[index], datamodule.data.labels[index]
    predictor.backend = resolve_backend(cfg.get("backend", "torch"), model.device, len(images))
    probs = predictor.predict(array_loader(images, 64))["probs"].numpy()  # Grad-CAM itself needs torch
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = explanation_figures(
        model, images, probs, model.class_names, out, labels, cfg.per_class, cfg.max_wrong, cfg.get("layer")
    )
    for name, path in figures.items():
        print(f"{name}: {path}")
    return figures
