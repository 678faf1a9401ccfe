"""Stratified train/val/test split that never lets a group straddle two splits.

A group is a set of near-duplicate images (see ``bloodcells.data.dedup``); with no groups,
every image is its own group and this is a plain stratified split.
"""

from __future__ import annotations

import numpy as np

from bloodcells.core.errors import ConfigError, DataError


def stratified_split(
    labels: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    groups: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Return sorted indices per split, stratified by label, whole groups at a time.

    Groups are stratified by the label of their first member; per class they are shuffled
    and handed to test, then val, until each split holds its share of that class's images.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"data.val_fraction={val_fraction}, data.test_fraction={test_fraction}: each must be in [0, 1) "
            "and their sum below 1"
        )
    groups = np.arange(n) if groups is None else np.asarray(groups)
    if groups.shape != labels.shape:
        raise DataError(f"groups has shape {groups.shape}, labels {labels.shape}")
    rng = np.random.default_rng(seed)
    group_ids, first, sizes = np.unique(groups, return_index=True, return_counts=True)
    group_label = labels[first]
    assignment = np.zeros(len(group_ids), dtype=np.int8)  # 0 train, 1 val, 2 test
    for c in np.unique(group_label):
        members = rng.permutation(np.flatnonzero(group_label == c))
        total = sizes[members].sum()
        targets = ((2, round(test_fraction * total)), (1, round(val_fraction * total)))
        pos = 0
        for split_code, target in targets:
            taken = 0
            while pos < len(members) and taken < target:
                assignment[members[pos]] = split_code
                taken += sizes[members[pos]]
                pos += 1
    image_split = assignment[np.searchsorted(group_ids, groups)]
    return {name: np.flatnonzero(image_split == code) for code, name in enumerate(("train", "val", "test"))}
