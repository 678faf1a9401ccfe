"""How well each stain normaliser undoes the suite's stain shifts on real cells: mean absolute
difference (0-255) between a shifted cell and its original, raw and after each normaliser
(reference fitted on other cells), and the share of images the normaliser changes by more
than 10 levels when nothing was shifted. Same cells, same run: the ratio is the figure.

    python bench/stain_norm.py [--n 512]   (pbc96 when ../shared is there, else the bundled sample)
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import emit, pbc96_cache

from bloodcells.core.hydra import PROJECT_ROOT
from bloodcells.data.readers import read_folder
from bloodcells.data.shifts import shifted
from bloodcells.models.stain_norm import STAIN_NORMS

STAIN_SHIFTS = ("stain_mild", "stain_strong", "stain_pale", "stain_eosin_heavy")


def cells(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` evenly spaced cells to shift and a disjoint set to fit the references on."""
    shared = PROJECT_ROOT.parent / "shared" / "data" / "pbc96" / "train"
    images = np.load(pbc96_cache())["images"] if shared.is_dir() else read_folder(PROJECT_ROOT / "data/sample").images
    order = np.random.default_rng(0).permutation(len(images))
    return images[np.sort(order[:n])], images[np.sort(order[n : n + 2000])]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(2)
    shown, fitting = cells(args.n)
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)  # noqa: E731
    norms = {}
    for name, cls in STAIN_NORMS.items():
        norms[name] = cls()
        norms[name].fit_reference(fitting)
    rows = []
    with torch.no_grad():
        original = as_tensor(shown).float()
        normed = {name: norm(original) for name, norm in norms.items()}
        for name in norms:
            changed = (normed[name] - original).abs().mean(dim=(1, 2, 3))
            print(f"{name}: changes {float((changed > 10).float().mean()):.1%} of unshifted cells by > 10 levels")
        for shift in STAIN_SHIFTS:
            moved = as_tensor(shifted(shown, shift)).float()
            row = {"shift": shift, "raw": round(float((moved - original).abs().mean()), 2)}
            for name, norm in norms.items():
                row[name] = round(float((norm(moved) - normed[name]).abs().mean()), 2)
            rows.append(row)
            print(row, flush=True)
    emit({"bench": "stain_norm", "cells": len(shown), "rows": rows})


if __name__ == "__main__":
    main()
