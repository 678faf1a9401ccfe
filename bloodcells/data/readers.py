"""Readers for the three input formats, all returning one in-memory ``ImageSet``.

Every reader validates its input and raises ``DataError`` naming the file (and the index
or path) and what is wrong, so a user never sees a stack trace from deep inside torch.

Colour policy (documented in the README): grayscale images are replicated to 3 channels
and RGBA images lose their alpha channel (composited on nothing: alpha is dropped); both
are logged once per file as a warning. Any other channel count is refused.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from bloodcells import CLASS_NAMES
from bloodcells.core.errors import DataError
from bloodcells.data.image_cache import cached_folder
from bloodcells.data.images import (
    IMAGE_SUFFIXES,
    ImageSet,
    check_images,
    check_labels,
    folder_listing,
    list_images,
    load_image,
    sites_of,
    stack_images,
    warn_resized,
)
from bloodcells.data.resize import resize_array

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def open_npz(path: str | Path) -> np.lib.npyio.NpzFile:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an .npz file (expected a zip archive of .npy arrays, as numpy.savez writes)")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from err


def require_key(npz: np.lib.npyio.NpzFile, key: str, path: str | Path) -> np.ndarray:
    if key not in npz.files:
        raise DataError(f"{path}: missing key '{key}' (keys present: {sorted(npz.files)})")
    try:
        return npz[key]
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: array '{key}' is unreadable ({err})") from err


def read_npz(path: str | Path, class_names: tuple[str, ...] = CLASS_NAMES) -> ImageSet:
    """The course npz: ``images`` N x 96 x 96 x 3 uint8 and ``labels`` N x 1 or N."""
    with open_npz(path) as npz:
        images = check_images(require_key(npz, "images", path), str(path))
        labels = check_labels(require_key(npz, "labels", path), len(images), len(class_names), str(path))
        site = npz_sites(npz, len(images), path)
    sources = [f"{Path(path).name}[{i}]" for i in range(len(images))]
    return ImageSet(images, labels, sources, tuple(class_names), site=site)


SITE_KEYS = ("source", "dataset")


def npz_sites(npz: np.lib.npyio.NpzFile, n: int, path: str | Path) -> np.ndarray | None:
    """An npz's optional ``source`` (or ``dataset``) key: one name or number per image."""
    key = next((k for k in SITE_KEYS if k in npz.files), None)
    if key is None:
        return None
    site = require_key(npz, key, path).reshape(-1)
    if len(site) != n or site.dtype.kind not in "iuUS":
        raise DataError(
            f"{path}: '{key}' must hold one name or integer per image ({n}), got {site.dtype} x {len(site)}"
        )
    return site.astype(str)


def read_medmnist(path: str | Path, class_names: tuple[str, ...] = CLASS_NAMES, keep_split: bool = True) -> ImageSet:
    """MedMNIST npz (``train_images``/``train_labels``, ``val_*``, ``test_*``).

    With ``keep_split`` the official split travels in ``ImageSet.split``.
    """
    parts, splits, sources = [], [], []
    labels_parts = []
    with open_npz(path) as npz:
        present = [s for s in SPLITS if f"{s}_images" in npz.files]
        if not present:
            raise DataError(
                f"{path}: missing key 'train_images' (a MedMNIST npz has train_/val_/test_ "
                f"images and labels; keys present: {sorted(npz.files)})"
            )
        for s in present:
            where = f"{path} [{s}]"
            imgs = check_images(require_key(npz, f"{s}_images", path), where)
            labs = check_labels(require_key(npz, f"{s}_labels", path), len(imgs), len(class_names), where)
            parts.append(imgs)
            labels_parts.append(labs)
            splits += [s] * len(imgs)
            sources += [f"{Path(path).name}:{s}[{i}]" for i in range(len(imgs))]
    shapes = {p.shape[1:] for p in parts}
    if len(shapes) > 1:
        raise DataError(f"{path}: splits have different image shapes {sorted(shapes)}")
    return ImageSet(
        np.concatenate(parts),
        np.concatenate(labels_parts),
        sources,
        tuple(class_names),
        split=np.array(splits) if keep_split else None,
    )


def read_folder(
    root: str | Path,
    class_names: tuple[str, ...] = CLASS_NAMES,
    image_size: int | None = None,
    cache_dir: str | None = None,
) -> ImageSet:
    """An image tree ``root/<class>/*.jpg|png``; folder names must be the class names.

    With ``cache_dir``, the images are decoded once into a memory-mapped uint8 file there
    (``bloodcells.data.image_cache``) and read from it by every later run and loader worker,
    so a tree larger than memory trains; without, they are decoded into memory.
    """
    if cache_dir is not None:
        return cached_folder(root, tuple(class_names), image_size, Path(cache_dir))
    root, paths, labels = folder_listing(root, tuple(class_names))
    images = stack_images([load_image(f) for f in paths], paths, image_size)
    sources = [str(p.relative_to(root)) for p in paths]
    return ImageSet(images, np.array(labels, dtype=np.int64), sources, tuple(class_names), site=sites_of(sources))


def read_unlabelled(path: str | Path, image_size: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Images to predict on: an npz (``images`` or ``test_images``), a folder tree, or one file."""
    path = Path(path)
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise DataError(f"{path}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
        images = stack_images([load_image(f) for f in files], files, image_size)
        return images, [str(f.relative_to(path)) for f in files]
    if path.suffix.lower() == ".npz":
        with open_npz(path) as npz:
            key = next((k for k in ("images", "test_images") if k in npz.files), None)
            if key is None:
                raise DataError(
                    f"{path}: missing key 'images' (course npz) or 'test_images' (MedMNIST); "
                    f"keys present: {sorted(npz.files)}"
                )
            images = check_images(require_key(npz, key, path), str(path))
        if image_size is not None:
            warn_resized(
                [images.shape[1:3]] * len(images), [f"{path.name}[{i}]" for i in range(len(images))], image_size
            )
            images = resize_array(images, image_size)
        return images, [f"{path.name}[{i}]" for i in range(len(images))]
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return stack_images([load_image(path)], [path], image_size), [path.name]


def read_npy(
    images: str | Path, labels: str | Path, class_names: tuple[str, ...] = CLASS_NAMES, mmap: bool = True
) -> ImageSet:
    """Images N x H x W x 3 uint8 in one ``.npy``, memory-mapped (never read whole; ``mmap``
    false reads it into memory), and their labels (N or N x 1) in another."""
    images, labels = Path(images), Path(labels)
    for path in (images, labels):
        if not path.is_file():
            raise DataError(f"{path}: file not found")
    try:
        pixels = np.load(images, mmap_mode="r" if mmap else None)
        targets = np.load(labels)
    except ValueError as err:
        raise DataError(f"{images} / {labels}: not a readable .npy file ({err})") from None
    except MemoryError:
        gb = images.stat().st_size / 1e9
        raise DataError(f"{images}: {gb:.1f} GB of images do not fit in memory; keep data.reader.mmap=true") from None
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise DataError(f"{images}: expected uint8 N x H x W x 3, got {pixels.dtype} {pixels.shape}")
    check_images(pixels[:1], str(images))
    targets = check_labels(targets, len(pixels), len(class_names), str(labels))
    sources = [f"{images.name}[{i}]" for i in range(len(pixels))]
    return ImageSet(pixels, targets, sources, tuple(class_names))
