"""Contact sheets and the mean-pixel histogram, to check cleaning decisions by eye."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def contact_sheet(
    path: Path,
    images: np.ndarray,
    rows: list[list[int]],
    captions: list[list[str]],
    row_titles: list[str],
    max_cols: int = 10,
) -> None:
    """One row per group: up to ``max_cols`` images with a caption each."""
    n_rows = max(1, len(rows))
    fig = Figure(figsize=(1.3 * max_cols, 1.5 * n_rows))
    axes = fig.subplots(n_rows, max_cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, (idx, caps, title) in enumerate(zip(rows, captions, row_titles)):
        for c, (i, cap) in enumerate(list(zip(idx, caps))[:max_cols]):
            axes[r, c].imshow(images[i])
            axes[r, c].set_title(cap, fontsize=6)
        axes[r, 0].text(-0.1, 0.5, title, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def mean_pixel_histogram(path: Path, images: np.ndarray, removed: list[int]) -> None:
    """Histogram of per-image mean pixel value (log count): repeated images show as spikes."""
    means = images.reshape(len(images), -1).mean(axis=1)
    mask = np.zeros(len(images), dtype=bool)
    mask[removed] = True
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    bins = np.linspace(0, 255, 129)
    ax.hist(means[~mask], bins=bins, color="tab:blue", label="kept")
    ax.hist(means[mask], bins=bins, color="tab:red", alpha=0.7, label="removed")
    ax.set_yscale("log")
    ax.set_xlabel("mean pixel value")
    ax.set_ylabel("images")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
