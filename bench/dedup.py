"""Cleaning speed and accuracy on the real PBC development set with planted pollution.

Ours: batched imagehash-exact pHash of the 8 dihedral variants + chunked all-pairs Hamming
search (+ thumbnail confirmation and union-find, timed separately). Baseline, in the same
run: a loop of ``imagehash.phash`` calls over the same 8 variants, plus a naive pairwise
comparison (``h1 - h2`` over every pair and variant), whose time is measured on a random
sample of pairs and scaled to all pairs (running it in full takes hours).

    python bench/dedup.py [--root ../shared/data/pbc96/train] [--out outputs/bench]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import imagehash
import numpy as np
from common import emit
from PIL import Image

from bloodcells.cleaning.contact_sheet import contact_sheet
from bloodcells.cleaning.hashing import dihedral_hashes
from bloodcells.cleaning.pipeline import best_correlation, clean_dataset, hamming_pairs, thumbnails
from bloodcells.cleaning.planting import plant_pollution
from bloodcells.data.readers import read_folder
from bloodcells.runs.clean import write_clean_outputs


def imagehash_loop(images: np.ndarray) -> list[list[imagehash.ImageHash]]:
    out = []
    for image in images:
        im = Image.fromarray(image)
        variants = []
        for k in range(4):
            r = im.rotate(90 * k, expand=True) if k else im
            variants += [imagehash.phash(r), imagehash.phash(r.transpose(Image.Transpose.FLIP_LEFT_RIGHT))]
        out.append(variants)
    return out


def naive_pairwise_seconds(
    hashes: list[list[imagehash.ImageHash]], threshold: int, sample_pairs: int
) -> tuple[float, int]:
    """Time of the naive all-pairs loop, from a timed random sample of pairs."""
    n = len(hashes)
    rng = random.Random(0)
    pairs = [(rng.randrange(n), rng.randrange(n)) for _ in range(sample_pairs)]
    start = time.perf_counter()
    hits = 0
    for i, j in pairs:
        hits += min(hashes[i][0] - hashes[j][v] for v in range(8)) <= threshold
    per_pair = (time.perf_counter() - start) / sample_pairs
    return per_pair * n * (n - 1) / 2, n * (n - 1) // 2


def closest_candidates(data, threshold: int, path: Path, top: int = 16) -> None:
    """The pHash candidates of the real set with the highest thumbnail correlation: the pairs
    closest to being called duplicates, to check the threshold by eye."""
    real_hashes = dihedral_hashes(data.images)
    pairs = hamming_pairs(real_hashes, real_hashes, threshold)
    corr = best_correlation(thumbnails(data.images[pairs[:, 0]]), thumbnails(data.images[pairs[:, 1]]))
    order = np.argsort(-corr)[:top]
    dist = [int(np.bitwise_count(real_hashes[i, 0] ^ real_hashes[j]).min()) for i, j in pairs[order]]
    contact_sheet(
        path,
        data.images,
        [list(pairs[k]) for k in order],
        [[data.sources[i].split("/")[-1][:14] for i in pairs[k]] for k in order],
        [f"d={d} r={corr[k]:.3f}" for d, k in zip(dist, order)],
        max_cols=2,
    )
    print(
        f"real pbc96: {len(pairs)} pHash candidates at distance <= {threshold}; highest correlations "
        f"{np.round(corr[order[:5]], 3).tolist()} -> {path}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared/data/pbc96/train"))
    parser.add_argument("--out", default="outputs/bench/dedup")
    parser.add_argument("--sample-pairs", type=int, default=20000)
    args = parser.parse_args()
    out = Path(args.out)
    data = read_folder(args.root)
    options = dict(threshold=8, min_correlation=0.90, drop_outliers=True)

    # the real development set as it is: how many near-duplicate groups at the defaults?
    real = clean_dataset(data.images, data.labels, data.class_names, **options)
    write_clean_outputs(out / "pbc96_real", data, real)
    print(f"real pbc96: {len(real.groups)} groups {real.counts['groups_by_decision']}, {len(real.outliers)} outliers")
    closest_candidates(data, options["threshold"], out / "pbc96_candidates.png")

    planted = plant_pollution(data.images, data.labels)
    n = len(planted.images)
    start = time.perf_counter()
    hashes = dihedral_hashes(planted.images)
    hash_s = time.perf_counter() - start
    start = time.perf_counter()
    candidates = hamming_pairs(hashes, hashes, options["threshold"])
    search_s = time.perf_counter() - start
    start = time.perf_counter()
    report = clean_dataset(planted.images, planted.labels, data.class_names, **options)
    clean_s = time.perf_counter() - start

    start = time.perf_counter()
    baseline_hashes = imagehash_loop(planted.images)
    baseline_hash_s = time.perf_counter() - start
    pairwise_s, n_pairs = naive_pairwise_seconds(baseline_hashes, options["threshold"], args.sample_pairs)
    agree = all(str(h[0]) == f"{int(o):016x}" for h, o in zip(baseline_hashes[:2000], hashes[:2000, 0]))

    removed = set(report.removed)
    # A planted copy and its original form one group, and keep-one keeps one of the two: it
    # cannot know which came first (an exact copy is the same image; a JPEG re-encode can be
    # sharper than its source), so a pair counts as found when exactly one of them is kept.
    pairs = {copy: original for copy, original in planted.exact_copies.items()}
    pairs.update({copy: original for copy, (original, _) in planted.near_copies.items()})
    pair_found = sum(1 for c, o in pairs.items() if (c in removed) != (o in removed))
    copy_kept = {kind: 0 for kind in ("exact", *sorted({k for _, k in planted.near_copies.values()}))}
    for c, o in pairs.items():
        if c not in removed and o in removed:
            copy_kept["exact" if c in planted.exact_copies else planted.near_copies[c][1]] += 1
    single = set(planted.overlay) | set(planted.colour_outliers)
    found = len(single & removed) + pair_found
    planted_total = len(single) + len(pairs)
    paired = set(pairs) | set(pairs.values())
    clean_dropped = len(removed - single - paired - set(real.removed)) + sum(
        1 for c, o in pairs.items() if c in removed and o in removed
    )
    ours = hash_s + search_s
    baseline = baseline_hash_s + pairwise_s
    print(
        f"{n} images: ours hash {hash_s:.1f} s + search {search_s:.1f} s ({len(candidates)} candidate pairs); "
        f"full clean {clean_s:.1f} s"
    )
    print(
        f"baseline: imagehash loop {baseline_hash_s:.1f} s + naive pairwise {pairwise_s:.0f} s "
        f"(scaled from {args.sample_pairs} of {n_pairs} pairs); identity hashes agree: {agree}"
    )
    emit(
        {
            "bench": "dedup",
            "images": n,
            "hash_s": round(hash_s, 2),
            "search_s": round(search_s, 2),
            "clean_s": round(clean_s, 2),
            "baseline_hash_s": round(baseline_hash_s, 2),
            "baseline_pairwise_s": round(pairwise_s, 1),
            "hash_speedup": round(baseline_hash_s / hash_s, 2),
            "speedup": round(baseline / ours, 1),
            "recall": round(found / planted_total, 4),
            "precision": round(found / max(1, len(removed - set(real.removed))), 4),
            "clean_dropped": clean_dropped,
            "copy_kept_not_original": copy_kept,
            "real_groups": len(real.groups),
            "real_removed": len(real.removed),
        }
    )


if __name__ == "__main__":
    main()
