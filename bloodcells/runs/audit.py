"""Audit the labels: ``python -m bloodcells.audit data=...`` writes audit.csv (every image,
suspects first: index in the input, source, given and suggested label, self-confidence,
is_issue, and an empty ``action`` column for the user) and audit.html (the suspects with the
Grad-CAM of the fold classifier that scored them). ``data.exclude=audit.csv`` in a later run
drops or relabels what the user confirmed.

Features are the backbone's pooled features (mean of the image and its mirror image), from
the model config's pretrained weights, or from a trained checkpoint (``ckpt_path``).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from bloodcells.cleaning.label_audit import confident_learning, cross_fit, ranked
from bloodcells.core.errors import check_positive
from bloodcells.data.datamodule import array_loader
from bloodcells.data.resize import resize_images
from bloodcells.inference.checkpoints import load_classifier
from bloodcells.inference.predictor import resolve_device
from bloodcells.models.module import CellClassifier
from bloodcells.reporting.gradcam import cam_figure, cams_for, default_layer
from bloodcells.reporting.html import STYLE, image_tag, note, table
from bloodcells.runs.build import build_datamodule, build_model

log = logging.getLogger(__name__)

COLUMNS = ["index", "source", "given", "suggested", "self_confidence", "suggested_prob", "is_issue", "action"]


@torch.inference_mode()
def pooled_features(model: CellClassifier, images: np.ndarray, batch_size: int = 128) -> torch.Tensor:
    """Features of every image, averaged with its mirror image's (N x D)."""
    model.eval()
    out = []
    for x, *_ in array_loader(images, batch_size):
        x = resize_images(x.to(model.device), model.hparams.image_size)
        out.append(((model.features(x) + model.features(x.flip(-1))) / 2).float().cpu())
    return torch.cat(out)


def write_audit_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)


def audit(cfg: DictConfig) -> dict:
    check_positive("gallery", cfg.gallery)
    device = resolve_device(cfg.get("device", "auto"))
    model = load_classifier(cfg.ckpt_path, device) if cfg.get("ckpt_path") else build_model(cfg).to(device)
    cfg.data.image_size = model.hparams.image_size
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    names = list(datamodule.class_names)
    index = datamodule.splits["all"]  # what cleaning kept: positions in the input
    images = datamodule.eval_images(index)
    labels = datamodule.data.labels[index]
    feats = pooled_features(model, images, datamodule.eval_batch_size)
    probs, fold, heads = cross_fit(feats, labels, len(names), int(cfg.folds), int(cfg.seed), float(cfg.l2))
    found = confident_learning(labels, probs)
    order = ranked(found)
    rows = [
        {
            "index": int(index[i]),
            "source": datamodule.data.sources[index[i]],
            "given": names[labels[i]],
            "suggested": names[found["suggested"][i]],
            "self_confidence": f"{found['self_confidence'][i]:.4f}",
            "suggested_prob": f"{probs[i, found['suggested'][i]]:.4f}",
            "is_issue": bool(found["is_issue"][i]),
            "action": "",
        }
        for i in order
    ]
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_audit_csv(run_dir / "audit.csv", rows)
    accuracy = float((probs.argmax(1) == labels).mean())
    n_issues = int(found["is_issue"].sum())
    suspects = [i for i in order[: int(cfg.gallery)] if found["is_issue"][i]]
    page = gallery_page(run_dir, model, heads, fold, images, suspects, rows, names, accuracy, cfg)
    print(f"{len(labels)} images, {cfg.folds}-fold out-of-fold accuracy {accuracy:.4f}: {n_issues} likely label errors")
    print(
        f"audit.csv: {run_dir / 'audit.csv'}  (suspects first; fill 'action' with drop or relabel, then train with "
        f"data.exclude={run_dir / 'audit.csv'})"
    )
    print(f"Gallery: {page}")
    return {"n": len(labels), "issues": n_issues, "oof_accuracy": accuracy, "csv": str(run_dir / "audit.csv")}


def fold_cams(
    model: CellClassifier, heads: list, fold: np.ndarray, images: np.ndarray, rows: list[int], classes: np.ndarray
) -> np.ndarray:
    """Grad-CAM of ``classes`` for the images at ``rows``, each through the backbone with the
    classifier of the fold that scored it (the one that never saw its label)."""
    cams = np.zeros((len(rows), *images.shape[1:3]), dtype=np.float32)
    layer = default_layer(model.backbone)
    original = model.head
    try:
        for k, head in enumerate(heads):
            mine = [j for j, i in enumerate(rows) if fold[i] == k]
            if not mine:
                continue
            linear = nn.Linear(head.weight.shape[1], head.weight.shape[0]).to(model.device)
            linear.weight.data.copy_(head.weight)
            linear.bias.data.copy_(head.bias)
            model.head = linear
            cams[mine] = cams_for(model, images[[rows[j] for j in mine]], classes[mine], layer)
    finally:
        model.head = original
    return cams


def gallery_page(
    run_dir: Path,
    model: CellClassifier,
    heads: list,
    fold: np.ndarray,
    images: np.ndarray,
    suspects: list[int],
    rows: list[dict],
    names: list[str],
    accuracy: float,
    cfg: DictConfig,
) -> Path:
    """audit.html: the suspects (image with the Grad-CAM of its fold's classifier for the
    suggested label) and the top of audit.csv."""
    figure = None
    if suspects:
        suggested = np.array([names.index(rows[r]["suggested"]) for r in range(len(suspects))])
        cams = fold_cams(model, heads, fold, images, suspects, suggested)
        captions = [
            f"{r['given'][:7]}->{r['suggested'][:7]} {float(r['self_confidence']):.2f}" for r in rows[: len(suspects)]
        ]
        figure = run_dir / "audit_gallery.png"
        cam_figure(figure, images[suspects], cams, captions, "likely label errors: given->suggested, p(given)")
    body = (
        f"<h1>bloodcells audit</h1><p>{len(fold)} images; {cfg.folds}-fold out-of-fold accuracy {accuracy:.4f}; "
        f"{sum(r['is_issue'] for r in rows)} flagged by confident learning.</p>"
        + note(
            "Each image was scored by a classifier fitted on the other folds (it never saw this label). Flagged: "
            "an image confidently counted as another class than its label. Maps: Grad-CAM of the fold classifier "
            "for the suggested class. Check them by eye before dropping or relabelling anything."
        )
        + (image_tag(figure, "suspects") if figure else note("no suspects"))
        + table(rows[: int(cfg.gallery)], COLUMNS[:-1])
    )
    page = run_dir / "audit.html"
    page.write_text(
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>bloodcells audit</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )
    return page
