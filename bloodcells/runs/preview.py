"""Preview an augmentation pipeline: ``python -m bloodcells.preview aug=mixed``.

Writes ``preview.png`` into its run dir: one row per class (a sample image), the original
then ``n`` augmented versions (the first report's figure 2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from omegaconf import DictConfig

from bloodcells.core.errors import check_positive
from bloodcells.core.hydra import instantiate
from bloodcells.data.images import ImageSet
from bloodcells.data.transforms import build_pipeline
from bloodcells.runs.build import build_reader


def preview(cfg: DictConfig) -> Path:
    check_positive("n", cfg.n)
    data: ImageSet = build_reader(cfg)(class_names=tuple(cfg.class_names))
    pipeline = build_pipeline(instantiate(cfg.aug.train))
    pipeline.set_random_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    classes = [c for c in range(len(data.class_names)) if np.any(data.labels == c)]
    fig = Figure(figsize=(1.4 * (cfg.n + 1), 1.5 * len(classes)))
    axes = fig.subplots(len(classes), cfg.n + 1, squeeze=False)
    for row, c in enumerate(classes):
        image = data.images[rng.choice(np.flatnonzero(data.labels == c))]
        versions = [image] + [pipeline(image=image)["image"] for _ in range(cfg.n)]
        for col, im in enumerate(versions):
            axes[row, col].imshow(im)
            axes[row, col].axis("off")
        axes[row, 0].set_title(data.class_names[c], fontsize=8, loc="left")
    axes[0, 1].set_title("augmented ->", fontsize=8, loc="left")
    fig.tight_layout()
    out = Path(cfg.paths.output_dir) / "preview.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"Preview of aug={cfg.aug_name}: {out}")
    return out
