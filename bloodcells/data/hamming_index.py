"""Exact Hamming-radius search in sub-quadratic time: multi-index hashing (Norouzi et al.).

The 64-bit hash is cut into ``m`` chunks. If two hashes differ in at most ``r`` bits, some
chunk differs in at most ``q`` bits whenever ``m * (q + 1) > r`` (pigeonhole), so probing
each chunk's table with every value within ``q`` bits of the query's chunk finds every true
pair; candidates are then checked on the full hash. The answer is exactly the all-pairs
answer (``dedup.hamming_pairs``), only the work differs: about ``N * probes * (1 + 8N / 2^bits)``
instead of ``8 N^2`` (8 dihedral variants). Tables are direct-addressed (chunks of at most
24 bits: one offset array, no hashing), and queries go in blocks, so memory stays bounded.

Worth it from a few tens of thousands of hashes; ``m`` and ``q`` are chosen by that cost.
Real pHashes are not uniform (some chunk values are common), so real data gets more
candidates than the estimate; the result stays exact.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

BITS = 64
MAX_CHUNK_BITS = 24


def flip_masks(width: int, radius: int) -> np.ndarray:
    """Every ``width``-bit value with at most ``radius`` bits set (the probes around a key)."""
    masks = [0]
    for k in range(1, radius + 1):
        masks += [sum(1 << b for b in bits) for bits in itertools.combinations(range(width), k)]
    return np.asarray(masks, dtype=np.int64)


def chunk_bounds(m: int) -> list[tuple[int, int]]:
    """(shift, width) of ``m`` near-equal chunks of a 64-bit hash."""
    edges = np.linspace(0, BITS, m + 1).round().astype(int)
    return [(int(a), int(b - a)) for a, b in zip(edges[:-1], edges[1:])]


def plan(n_query: int, n_entries: int, threshold: int) -> tuple[int, int]:
    """(chunks m, per-chunk radius q) with the least estimated work for uniform hashes."""
    best = None
    smallest = math.ceil(BITS / MAX_CHUNK_BITS)  # direct-addressed tables need chunks <= 24 bits
    for m in range(smallest, max(smallest, threshold + 1) + 1):
        q = (threshold + 1 + m - 1) // m - 1  # smallest q with m * (q + 1) > threshold
        cost = sum(sum(math.comb(w, k) for k in range(q + 1)) * (1 + n_entries / 2**w) for _, w in chunk_bounds(m))
        if best is None or cost < best[0]:
            best = (cost, m, q)
    return best[1], best[2]


class HammingIndex:
    """Reference hashes (N x V, V variants per item) indexed by chunks."""

    def __init__(self, reference: np.ndarray, threshold: int) -> None:
        self.reference = np.ascontiguousarray(reference, dtype=np.uint64)
        self.n, self.variants = self.reference.shape
        self.threshold = threshold
        flat = self.reference.ravel()
        self.m, self.q = plan(len(flat) // max(1, self.variants), len(flat), threshold)
        self.tables = []
        for shift, width in chunk_bounds(self.m):
            keys = ((flat >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
            order = np.argsort(keys, kind="stable").astype(np.int64)
            starts = np.zeros(2**width + 1, dtype=np.int64)
            np.cumsum(np.bincount(keys, minlength=2**width), out=starts[1:])
            self.tables.append((shift, width, order, starts, flip_masks(width, self.q)))

    def candidates(self, query: np.ndarray) -> np.ndarray:
        """Unique (query row, reference item) pairs sharing a chunk within ``q`` bits."""
        found = []
        for shift, width, order, starts, masks in self.tables:
            keys = ((query >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
            probes = keys[:, None] ^ masks[None, :]
            lo, hi = starts[probes].ravel(), starts[probes + 1].ravel()
            counts = hi - lo
            total = int(counts.sum())
            if total == 0:
                continue
            rows = np.repeat(np.repeat(np.arange(len(query)), len(masks)), counts)
            offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
            items = order[np.repeat(lo, counts) + offsets] // self.variants
            found.append(rows * self.n + items)
        if not found:
            return np.empty((0, 2), dtype=np.int64)
        pairs = np.unique(np.concatenate(found))
        return np.stack([pairs // self.n, pairs % self.n], axis=1)

    def pairs(self, query: np.ndarray, same_set: bool = True, block: int = 2048) -> np.ndarray:
        """(i, j) with min over variants of popcount(query[i, 0] ^ reference[j, v]) <= threshold:
        the same pairs, in the same order, as ``dedup.hamming_pairs``."""
        out = []
        for start in range(0, len(query), block):
            q = np.ascontiguousarray(query[start : start + block, 0], dtype=np.uint64)
            cand = self.candidates(q)
            if same_set:
                cand = cand[cand[:, 0] + start < cand[:, 1]]
            dist = np.bitwise_count(q[cand[:, 0], None] ^ self.reference[cand[:, 1]]).min(axis=1)
            keep = cand[dist <= self.threshold]
            keep[:, 0] += start
            out.append(keep)
        return np.concatenate(out) if out else np.empty((0, 2), dtype=np.int64)
