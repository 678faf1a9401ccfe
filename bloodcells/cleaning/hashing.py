"""Batched image hashes: exact (decoded pixels) and perceptual (pHash, dHash, average hash).

The perceptual hashes reproduce ``imagehash`` bit for bit, vectorised over a whole array of
images: PIL's RGB->L conversion and its Lanczos/bilinear resampling are integer
fixed-point arithmetic, reproduced here as matrix products (exact in float64, since every
partial sum is an integer below 2**53), and the DCT is scipy's, applied along the batch.
A hash is a uint64 (8x8 bits, row-major, first bit most significant, as imagehash prints).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import scipy.fftpack

PRECISION_BITS = 32 - 8 - 2  # PIL's Resample.c, 8 bits per channel
HASH_SIZE = 8


def exact_ids(images: np.ndarray) -> np.ndarray:
    """Id per image (index of its first identical copy): equal iff the decoded pixels are."""
    first: dict[bytes, int] = {}
    ids = np.empty(len(images), dtype=np.int64)
    for i, image in enumerate(images):
        ids[i] = first.setdefault(hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).digest(), i)
    return ids


_LUMA_WEIGHTS = np.array([19595, 38470, 7471], dtype=np.float32)


def to_luma(images: np.ndarray) -> np.ndarray:
    """PIL's ``convert('L')``: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, as float64.

    Exact in float32: every partial sum is an integer below 255 * 65536 + 0x8000 < 2**24.
    """
    acc = images.reshape(-1, 3).astype(np.float32) @ _LUMA_WEIGHTS
    luma = np.floor((acc + 0x8000) * (1.0 / 65536))
    return luma.reshape(images.shape[:-1]).astype(np.float64)


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where((x >= -3.0) & (x < 3.0), np.sinc(x) * np.sinc(x / 3.0), 0.0)


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


FILTERS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "lanczos": (_lanczos, 3.0),
    "bilinear": (_bilinear, 1.0),
}


def resample_matrix(in_size: int, out_size: int, kind: str = "lanczos") -> np.ndarray:
    """PIL's fixed-point resampling coefficients as an out_size x in_size integer matrix."""
    fn, support = FILTERS[kind]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support * filterscale
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        w = fn((np.arange(xmin, xmax) - center + 0.5) / filterscale)
        total = w.sum()
        if total != 0.0:
            w = w / total
        fixed = np.where(w < 0, np.trunc(-0.5 + w * (1 << PRECISION_BITS)), np.trunc(0.5 + w * (1 << PRECISION_BITS)))
        matrix[xx, xmin:xmax] = fixed
    return matrix


def _clip8(acc: np.ndarray) -> np.ndarray:
    """PIL's rounding shift and clamp (scaling by a power of two is exact in float64)."""
    out = np.floor((acc + (1 << (PRECISION_BITS - 1))) * (1.0 / (1 << PRECISION_BITS)))
    return np.clip(out, 0, 255, out=out)


def resize_luma(luma: np.ndarray, size: int, kind: str = "lanczos") -> np.ndarray:
    """PIL's ``resize((size, size), kind)`` of N x H x W luma: horizontal then vertical pass."""
    n, h, w = luma.shape
    if (h, w) == (size, size):
        return luma
    x = luma
    if w != size:
        x = _clip8((x.reshape(-1, w) @ resample_matrix(w, size, kind).T).reshape(n, h, size))
    if h != size:
        x = _clip8(resample_matrix(h, size, kind) @ x)
    return x


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """N x 8 x 8 booleans -> N uint64, first bit most significant (imagehash's hex order)."""
    flat = bits.reshape(len(bits), -1).astype(np.uint64)
    weights = np.uint64(1) << np.arange(flat.shape[1] - 1, -1, -1, dtype=np.uint64)
    return (flat * weights).sum(axis=1, dtype=np.uint64)


def phash_luma(luma: np.ndarray, hash_size: int = HASH_SIZE, highfreq_factor: int = 4) -> np.ndarray:
    size = hash_size * highfreq_factor
    pixels = resize_luma(luma, size, "lanczos")
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=1), axis=2)
    low = dct[:, :hash_size, :hash_size]
    med = np.median(low.reshape(len(low), -1), axis=1)
    return pack_bits(low > med[:, None, None])


def average_hash_luma(luma: np.ndarray, hash_size: int = HASH_SIZE) -> np.ndarray:
    pixels = resize_luma(luma, hash_size, "lanczos")
    mean = pixels.reshape(len(pixels), -1).mean(axis=1)
    return pack_bits(pixels > mean[:, None, None])


def dhash_luma(luma: np.ndarray, hash_size: int = HASH_SIZE) -> np.ndarray:
    n, h, w = luma.shape
    x = _clip8(luma @ resample_matrix(w, hash_size + 1).T)
    x = _clip8(resample_matrix(h, hash_size) @ x)
    return pack_bits(x[:, :, 1:] > x[:, :, :-1])


LUMA_HASHES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "phash": phash_luma,
    "dhash": dhash_luma,
    "average": average_hash_luma,
}


def image_hash(images: np.ndarray, kind: str = "phash") -> np.ndarray:
    """``imagehash.<kind>`` (phash, dhash, average) of N x H x W x 3 uint8 images, as uint64."""
    return LUMA_HASHES[kind](to_luma(images))


def dihedral_hashes(images: np.ndarray, kind: str = "phash", chunk: int = 256) -> np.ndarray:
    """N x 8 hashes, one per flip/90-degree rotation (identity first), in bounded memory.

    Luma is computed once per image and rotated (a pointwise map commutes with rotation).
    """
    fn = LUMA_HASHES[kind]
    out = np.empty((len(images), 8), dtype=np.uint64)
    for start in range(0, len(images), chunk):
        luma = to_luma(images[start : start + chunk])
        for k in range(4):
            rotated = np.rot90(luma, k, axes=(1, 2))
            out[start : start + chunk, 2 * k] = fn(np.ascontiguousarray(rotated))
            out[start : start + chunk, 2 * k + 1] = fn(np.ascontiguousarray(rotated[:, :, ::-1]))
    return out


def hex_hash(h: int | np.uint64) -> str:
    return f"{int(h):016x}"
