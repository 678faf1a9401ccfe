"""Near-duplicate search, pollution detection and colour outliers, with every decision kept.

Pipeline (``clean_dataset``): exact ids and dihedral pHashes -> Hamming search (multi-index,
sub-quadratic, or all-pairs: the same pairs) -> candidate pairs confirmed by thumbnail correlation -> groups
by union-find -> one decision per group:
- larger than ``pollution_min_size``: pollution (an image repeated hundreds of times, like
  the course's memes), dropped whatever its labels;
- members disagree on the label: dropped (``conflict="drop"``) or relabelled to the
  majority and reduced to one image (``conflict="majority"``);
- same label: one image kept, or all kept (``same_label="keep_all"``: the split then keeps
  the group on one side).
When one member stays, it is the most typical one: within the colour norm (not a colour
outlier) and the sharpest (re-encoded or resized copies are blurrier); report.json says
which was kept and why.
Colour outliers (robust z-score of per-image channel means and stds) are flagged, and
dropped if ``drop_outliers``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from bloodcells.cleaning.hamming_index import HammingIndex
from bloodcells.cleaning.hashing import dihedral_hashes, exact_ids, resize_luma, to_luma
from bloodcells.core.errors import DataError, check_choice


def hamming_pairs(
    query: np.ndarray, reference: np.ndarray, threshold: int, same_set: bool = True, memory_mb: int = 64
) -> np.ndarray:
    """Pairs (i, j) with min over variants of popcount(query[i, 0] ^ reference[j, v]) <= threshold.

    ``query`` and ``reference`` are N x V uint64 (V dihedral variants). Comparing the
    identity variant of ``i`` with every variant of ``j`` covers every relative orientation.
    With ``same_set``, only i < j is returned. Rows are processed in chunks whose XOR block
    stays under ``memory_mb``, so 100,000 images need no more memory than 1,000.
    """
    chunk = max(1, (memory_mb << 20) // max(1, reference.size * 8))
    out = []
    for start in range(0, len(query), chunk):
        q = query[start : start + chunk, 0]
        dist = np.bitwise_count(q[:, None, None] ^ reference[None, :, :]).min(axis=2)
        i, j = np.nonzero(dist <= threshold)
        i += start
        if same_set:
            keep = i < j
            i, j = i[keep], j[keep]
        out.append(np.stack([i, j], axis=1))
    return np.concatenate(out) if out else np.empty((0, 2), dtype=np.int64)


def near_pairs(query: np.ndarray, reference: np.ndarray, threshold: int, same_set: bool, search: str) -> np.ndarray:
    """``hamming_pairs`` by all-pairs (``search="exact"``, quadratic) or by the multi-index
    (``"index"``, sub-quadratic): the same pairs either way."""
    check_choice("data.clean_options.search", search, ("index", "exact"))
    if search == "exact":
        return hamming_pairs(query, reference, threshold, same_set=same_set)
    return HammingIndex(reference, threshold).pairs(query, same_set=same_set)


def thumbnails(images: np.ndarray, size: int = 32) -> np.ndarray:
    """Luma thumbnails (N x size x size float32), the same ones pHash computes its DCT on."""
    return np.concatenate(
        [resize_luma(to_luma(images[s : s + 256]), size) for s in range(0, max(len(images), 1), 256)]
    ).astype(np.float32)


def best_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, the best Pearson correlation of thumbnail ``a`` with any dihedral variant of ``b``.

    pHash alone confuses distinct cells that share a layout (distance 5-8 of 64 bits is
    common between different PBC cells, correlation <= 0.83 on pbc96); a re-encoded,
    resized, flipped or brightness-shifted copy keeps a correlation above 0.99, and the same
    cell photographed twice, slightly shifted, 0.90-0.96 (two such pairs in pbc96).
    """
    a = a.reshape(len(a), -1)
    a = a - a.mean(axis=1, keepdims=True)
    best = np.full(len(a), -1.0)
    for k in range(4):
        rotated = np.rot90(b, k, axes=(1, 2))
        for variant in (rotated, rotated[:, :, ::-1]):
            v = np.ascontiguousarray(variant).reshape(len(b), -1)
            v = v - v.mean(axis=1, keepdims=True)
            denom = np.sqrt((a * a).sum(axis=1) * (v * v).sum(axis=1))
            corr = np.where(denom > 0, (a * v).sum(axis=1) / np.where(denom > 0, denom, 1), 1.0)
            best = np.maximum(best, corr)
    return best


def confirm_pairs(query: np.ndarray, reference: np.ndarray, pairs: np.ndarray, min_correlation: float) -> np.ndarray:
    """Keep the candidate pairs whose thumbnails correlate at least ``min_correlation``."""
    if len(pairs) == 0:
        return pairs
    q_ids, q_inv = np.unique(pairs[:, 0], return_inverse=True)
    r_ids, r_inv = np.unique(pairs[:, 1], return_inverse=True)
    corr = best_correlation(thumbnails(query[q_ids])[q_inv], thumbnails(reference[r_ids])[r_inv])
    return pairs[corr >= min_correlation]


def union_find_groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """Group id per item (the smallest member index), from the pairs that link items."""
    parent = np.arange(n)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for a, b in pairs:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)])


def robust_z(values: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 * MAD) per column; columns with MAD 0 use the mean abs dev."""
    med = np.median(values, axis=0)
    mad = np.median(np.abs(values - med), axis=0) * 1.4826
    fallback = np.mean(np.abs(values - med), axis=0) * 1.2533
    scale = np.where(mad > 0, mad, np.where(fallback > 0, fallback, 1.0))
    return (values - med) / scale


def colour_stats(images: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Per image: mean and std of each RGB channel (N x 6)."""
    out = []
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].reshape(-1, images.shape[1] * images.shape[2], 3).astype(np.float32)
        out.append(np.concatenate([x.mean(axis=1), x.std(axis=1)], axis=1))
    return np.concatenate(out)


@dataclass
class CleanReport:
    """What the cleaning found and decided; ``removed`` indexes the input dataset."""

    n_input: int
    groups: list[dict] = field(default_factory=list)
    outliers: list[dict] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    relabelled: dict[int, int] = field(default_factory=dict)
    group_of: list[int] = field(default_factory=list)
    counts: dict = field(default_factory=dict)

    def keep_mask(self) -> np.ndarray:
        mask = np.ones(self.n_input, dtype=bool)
        mask[self.removed] = False
        return mask

    def to_json(self) -> dict:
        return {
            "n_input": self.n_input,
            "n_kept": int(self.keep_mask().sum()),
            "counts": self.counts,
            "removed": self.removed,
            "relabelled": {str(k): v for k, v in self.relabelled.items()},
            "groups": self.groups,
            "outliers": self.outliers,
        }


def find_groups(
    images: np.ndarray, hash: str, threshold: int, min_correlation: float | None, search: str = "index"
) -> tuple[np.ndarray, np.ndarray]:
    """Exact ids and near-duplicate group ids (union-find over confirmed pairs)."""
    n = len(images)
    exact = exact_ids(images)
    hashes = dihedral_hashes(images, hash)
    pairs = near_pairs(hashes, hashes, threshold, True, search)
    if min_correlation is not None:
        pairs = confirm_pairs(images, images, pairs, min_correlation)
    pairs = np.concatenate([pairs, np.stack([np.arange(n), exact], axis=1)])  # exact copies -> their first
    return exact, union_find_groups(n, pairs)


def sharpness(image: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the luma: re-encoded or resized copies lose it."""
    y = to_luma(image[None])[0].astype(np.float64)
    lap = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
    return float(lap.var())


def choose_keeper(members: np.ndarray, images: np.ndarray, colour_score: np.ndarray, outlier_z: float) -> dict:
    """The member to keep when one must stay: among the members within the colour norm
    (robust z <= ``outlier_z``; all members if none is), the sharpest; within 1% of the
    sharpest (flipped or rotated copies tie), the first."""
    typical = [int(i) for i in members if colour_score[i] <= outlier_z] or [int(i) for i in members]
    sharp = {i: sharpness(images[i]) for i in typical}
    best = max(sharp.values())
    kept = min(i for i in typical if sharp[i] >= 0.99 * best)
    reason = "sharpest member" + (" within the colour norm" if len(typical) < len(members) else "")
    return {"kept": kept, "kept_because": f"{reason} (Laplacian variance {sharp[kept]:.0f})"}


def decide_group(
    members: np.ndarray, labels: np.ndarray, pollution_min_size: int, conflict: str, same_label: str
) -> tuple[str, bool]:
    """The group's decision, and whether exactly one member stays."""
    n_labels = len(np.unique(labels[members]))
    if len(members) >= pollution_min_size:
        return "pollution", False
    if n_labels > 1:
        return ("conflict_dropped", False) if conflict == "drop" else ("conflict_majority", True)
    if same_label == "keep_all":
        return "duplicate_kept_all", False
    return "duplicate_keep_one", True


def clean_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: tuple[str, ...] | list[str],
    hash: str = "phash",
    threshold: int = 8,
    min_correlation: float | None = 0.90,
    pollution_min_size: int = 50,
    conflict: str = "drop",
    same_label: str = "keep_one",
    outlier_z: float = 12.0,
    drop_outliers: bool = False,
    search: str = "index",
) -> CleanReport:
    """Find duplicate groups, pollution and outliers; decide what to remove (see module doc)."""
    n = len(images)
    if n == 0:
        raise DataError("cleaning: the dataset holds no images")
    check_choice("data.clean_options.conflict", conflict, ("drop", "majority"))
    check_choice("data.clean_options.same_label", same_label, ("keep_one", "keep_all"))
    exact, group_of = find_groups(images, hash, threshold, min_correlation, search)
    colour_score = np.abs(robust_z(colour_stats(images))).max(axis=1)
    report = CleanReport(n_input=n, group_of=group_of.tolist())
    removed: set[int] = set()
    # one stable sort instead of a scan of all images per group: members stay in index order
    order = np.argsort(group_of, kind="stable")
    starts = np.flatnonzero(np.diff(group_of[order], prepend=-1))
    for members in np.split(order, starts[1:]):
        if len(members) < 2:
            continue
        decision, keep_one = decide_group(members, labels, pollution_min_size, conflict, same_label)
        group = {
            "decision": decision,
            "size": len(members),
            "exact": bool(len(np.unique(exact[members])) == 1),
            "members": members.tolist(),
            "labels": {class_names[k]: v for k, v in sorted(Counter(int(x) for x in labels[members]).items())},
        }
        if decision == "duplicate_kept_all":
            drop = []
        elif keep_one:
            group.update(choose_keeper(members, images, colour_score, outlier_z))
            drop = [int(i) for i in members if i != group["kept"]]
            if decision == "conflict_majority":
                report.relabelled[group["kept"]] = Counter(int(x) for x in labels[members]).most_common(1)[0][0]
        else:
            drop = [int(i) for i in members]
        group["removed"] = drop
        removed.update(drop)
        report.groups.append(group)
    for i in np.flatnonzero(colour_score > outlier_z):
        report.outliers.append(
            {"index": int(i), "label": class_names[int(labels[i])], "max_abs_z": round(float(colour_score[i]), 2)}
        )
        if drop_outliers:
            removed.add(int(i))
    report.groups.sort(key=lambda g: -g["size"])
    report.removed = sorted(removed)
    if len(report.removed) == n:
        raise DataError(f"cleaning removed all {n} images ({summarise(report, labels, class_names, drop_outliers)})")
    report.counts = summarise(report, labels, class_names, drop_outliers)
    return report


def summarise(report: CleanReport, labels: np.ndarray, class_names, drop_outliers: bool) -> dict:
    """Counts per decision and class for report.json and the log."""
    removed_labels = labels[report.removed] if report.removed else np.array([], dtype=np.int64)
    return {
        "groups_by_decision": dict(Counter(g["decision"] for g in report.groups)),
        "images_in_groups": int(sum(g["size"] for g in report.groups)),
        "outliers_flagged": len(report.outliers),
        "outliers_dropped": int(drop_outliers) * len(report.outliers),
        "removed": len(report.removed),
        "removed_by_class": {
            c: int(k) for c, k in zip(class_names, np.bincount(removed_labels, minlength=len(class_names))) if k
        },
        "kept_by_class": {
            c: int(k)
            for c, k in zip(class_names, np.bincount(np.delete(labels, report.removed), minlength=len(class_names)))
        },
    }


def cross_duplicates(
    query_images: np.ndarray,
    reference_images: np.ndarray,
    hash: str = "phash",
    threshold: int = 8,
    min_correlation: float | None = 0.90,
    search: str = "index",
) -> list[tuple[int, int]]:
    """(query index, reference index) pairs: e.g. test images with a near-copy in train."""
    query, reference = dihedral_hashes(query_images, hash), dihedral_hashes(reference_images, hash)
    pairs = near_pairs(query, reference, threshold, False, search)
    if min_correlation is not None:
        pairs = confirm_pairs(query_images, reference_images, pairs, min_correlation)
    return [(int(q), int(r)) for q, r in pairs]
