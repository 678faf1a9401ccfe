"""Grad-CAM (Selvaraju et al.) with forward/backward hooks on one backbone layer.

At 96 px a stride-32 feature map is 3 x 3, too coarse to say which part of a cell matters,
so the default layer is the last stage at stride 16 or finer from timm's ``feature_info``
(6 x 6 at 96 px): ``blocks.4`` for EfficientNet-Lite, ``features.denseblock3`` for DenseNet.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure

from bloodcells.core.errors import ConfigError
from bloodcells.data.resize import resize_images
from bloodcells.models.module import CellClassifier

MAX_STRIDE = 16


def default_layer(backbone: torch.nn.Module) -> str:
    """The deepest feature stage of timm's ``feature_info`` with stride <= 16."""
    info = getattr(backbone, "feature_info", None)
    if not info:
        raise ConfigError("layer=...: this backbone has no timm feature_info; name a module of model.backbone")
    return [f["module"] for f in info if f["reduction"] <= MAX_STRIDE][-1]


def grad_cam(
    model: CellClassifier, images: torch.Tensor, classes: torch.Tensor, layer: str | None = None
) -> torch.Tensor:
    """N x H x W maps in [0, 1] for uint8 N x 3 x H x W ``images``, each for its class in ``classes``."""
    name = layer or default_layer(model.backbone)
    try:
        module = model.backbone.get_submodule(name)
    except AttributeError:
        raise ConfigError(f"layer={name!r} is not a module of model.backbone") from None
    store: dict[str, torch.Tensor] = {}

    def keep(mod, inputs, output: torch.Tensor) -> None:
        store["act"] = output
        output.register_hook(lambda grad: store.__setitem__("grad", grad))

    handle = module.register_forward_hook(keep)
    model.eval()
    try:
        with torch.enable_grad(), torch.inference_mode(False):
            x = images.to(model.device).float().requires_grad_(True)
            logits = model(x)
            logits.gather(1, classes.to(model.device).view(-1, 1)).sum().backward()
    finally:
        handle.remove()
    act, grad = store["act"].detach(), store["grad"].detach()
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).cpu()


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """HWC uint8 image blended with the jet-coloured map."""
    heat = colormaps["jet"](cam)[..., :3] * 255
    return (image * (1 - alpha) + heat * alpha).astype(np.uint8)


def cam_figure(path, images: np.ndarray, cams: np.ndarray, captions: list[str], title: str, cols: int = 8) -> None:
    """A grid: each image beside its Grad-CAM overlay, with a caption."""
    n = len(images)
    rows = max(1, -(-n // (cols // 2)))
    fig = Figure(figsize=(1.3 * cols, 1.45 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, cols // 2)
        axes[r, 2 * c].imshow(images[i])
        axes[r, 2 * c + 1].imshow(overlay(images[i], cams[i]))
        axes[r, 2 * c].set_title(captions[i], fontsize=6, loc="left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def explanation_figures(
    model: CellClassifier,
    images: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    out_dir,
    labels: np.ndarray | None = None,
    per_class: int = 3,
    max_wrong: int = 24,
    layer: str | None = None,
) -> dict[str, str]:
    """``gradcam_grid.png`` (a few images per class: true class if known, else predicted) and,
    with labels, ``misclassified.png`` (true -> predicted, probability). Maps are for the
    predicted class. Returns {figure name: path}."""
    preds = probs.argmax(1)
    group = labels if labels is not None else preds
    chosen = [i for c in range(len(class_names)) for i in np.flatnonzero(group == c)[:per_class]]
    figures = {}
    layer = layer or default_layer(model.backbone)
    if chosen:
        cams = cams_for(model, images[chosen], preds[chosen], layer)
        captions = [f"{class_names[group[i]][:10]} p={probs[i, preds[i]]:.2f}" for i in chosen]
        path = out_dir / "gradcam_grid.png"
        who = "true" if labels is not None else "predicted"
        title = f"Grad-CAM ({layer}) by {who} class, map of the predicted class"
        cam_figure(path, images[chosen], cams, captions, title)
        figures["gradcam_grid"] = str(path)
    if labels is not None:
        wrong = np.flatnonzero(preds != labels)[:max_wrong]
        if len(wrong):
            cams = cams_for(model, images[wrong], preds[wrong], layer)
            captions = [
                f"{class_names[labels[i]][:6]}->{class_names[preds[i]][:6]} {probs[i, preds[i]]:.2f}" for i in wrong
            ]
            path = out_dir / "misclassified.png"
            n_wrong = int((preds != labels).sum())
            cam_figure(path, images[wrong], cams, captions, f"misclassified ({len(wrong)} of {n_wrong}): true->pred p")
            figures["misclassified"] = str(path)
    return figures


def cams_for(model: CellClassifier, images: np.ndarray, classes: np.ndarray, layer: str, batch: int = 32) -> np.ndarray:
    size = model.hparams.image_size
    out = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch])).permute(0, 3, 1, 2)
        shown = x.shape[-2:]
        x = resize_images(x, size)  # the model's input size; the map is drawn at the image's size
        cam = grad_cam(model, x, torch.as_tensor(classes[start : start + batch]), layer)
        out.append(F.interpolate(cam[:, None], size=shown, mode="bilinear")[:, 0].numpy())
    return np.concatenate(out)
