"""Near-duplicate search time: exact all-pairs (``dedup.hamming_pairs``) vs the multi-index
(``hamming_index.HammingIndex``), at 14k (pbc96's real dihedral pHashes, with planted
pollution), 100k and 1M hashes (synthetic: uniform random 64-bit hashes with 1% planted
near-copies at 0-8 bits). Both must return the same pairs; where all-pairs would take too
long it runs on a slice of the queries and is scaled by the slice (its cost is linear in
the number of queries), and the two answers are compared on that slice.

    python bench/near_search.py [--sizes 14000 100000 1000000] [--threshold 8]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import emit

from bloodcells.cleaning.hamming_index import HammingIndex
from bloodcells.cleaning.hashing import dihedral_hashes
from bloodcells.cleaning.pipeline import hamming_pairs
from bloodcells.cleaning.planting import plant_pollution
from bloodcells.data.readers import read_folder

ROOT = Path(__file__).resolve().parents[2] / "shared/data/pbc96/train"


def synthetic(n: int, rng: np.random.Generator) -> np.ndarray:
    hashes = rng.integers(0, 2**64, size=(n, 8), dtype=np.uint64)
    copies = rng.choice(n, size=n // 100, replace=False)
    for i in copies:  # item i's identity = another item's identity with 0-8 bits flipped
        # (identity only: random variants are no dihedral group, so a copy of variant v != 0
        # would be a pair only in one direction)
        j = rng.integers(0, n)
        flips = rng.choice(64, size=rng.integers(0, 9), replace=False)
        hashes[i, 0] = hashes[j, 0] ^ np.uint64(sum(1 << int(b) for b in flips))
    return hashes


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", type=int, default=[14000, 100000, 1000000])
    parser.add_argument("--threshold", type=int, default=8)
    parser.add_argument("--exact-queries", type=int, default=4000, help="query slice for all-pairs beyond 14k")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        if n <= 20000 and ROOT.is_dir():
            data = read_folder(ROOT)
            hashes = dihedral_hashes(plant_pollution(data.images, data.labels).images)
            kind = f"pbc96 + planted ({len(hashes)})"
        else:
            hashes = synthetic(n, rng)
            kind = "synthetic uniform + 1% near-copies"
        index, build_s = timed(lambda h=hashes: HammingIndex(h, args.threshold))
        fast, search_s = timed(lambda i=index, h=hashes: i.pairs(h))
        q = len(hashes) if len(hashes) <= 20000 else args.exact_queries
        exact, exact_s = timed(lambda h=hashes, q=q: hamming_pairs(h[:q], h, args.threshold))
        exact = exact[exact[:, 0] < exact[:, 1]]  # same_set over the slice
        same = np.array_equal(exact, fast[fast[:, 0] < q])
        exact_full_s = exact_s * len(hashes) / q
        row = {
            "n": len(hashes),
            "hashes": kind,
            "chunks_m": index.m,
            "chunk_radius_q": index.q,
            "pairs": int(len(fast)),
            "index_build_s": round(build_s, 2),
            "index_search_s": round(search_s, 2),
            "all_pairs_s": round(exact_full_s, 1),
            "all_pairs_measured_on_queries": q,
            "speedup": round(exact_full_s / (build_s + search_s), 1),
            "same_pairs": bool(same),
        }
        print(row, flush=True)
        rows.append(row)
    emit({"bench": "near_search", "threshold": args.threshold, "results": rows})


if __name__ == "__main__":
    main()
