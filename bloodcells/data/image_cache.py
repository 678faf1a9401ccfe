"""A memory-mapped image cache: decode once, then every run and loader worker maps one file.

A 200k-image set at 250 px is ~37 GB of pixels: decoding it into each process does not fit.
The cache is a plain ``.npy`` (N x H x W x 3 uint8) plus a JSON sidecar (labels, sources),
keyed by the folder's listing (paths, sizes, mtimes), the class names and the image size,
so a changed file or another ``image_size`` builds a new one. Images are written one at a
time into the mapped file (memory stays flat while it is built), under a temp name renamed
at the end (a killed build leaves no half cache). Reading maps it read-only: pages come from
the OS page cache, shared by the loader workers, and never count as the process's own memory.

``bloodcells.data.readers.read_npy`` reads such a pair (or any uint8 ``.npy`` of images with a
labels ``.npy``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from bloodcells.core.errors import DataError
from bloodcells.core.files import replace_atomically
from bloodcells.data.images import ImageSet, folder_listing, load_image, sites_of, warn_resized
from bloodcells.data.resize import resize_array

log = logging.getLogger(__name__)

VERSION = b"image-cache-v2"  # v2: resized by bloodcells.data.resize


def listing_key(root: Path, paths: list[Path], class_names: tuple[str, ...], image_size: int | None) -> str:
    key = hashlib.blake2b(VERSION, digest_size=16)
    key.update(json.dumps([str(root.resolve()), list(class_names), image_size]).encode())
    for p in paths:
        st = p.stat()
        key.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return key.hexdigest()


def build(images_file: Path, paths: list[Path], image_size: int | None) -> None:
    """Decode ``paths`` one by one into a mapped ``.npy`` (atomically replaced)."""
    first = load_image(paths[0])
    shape = (image_size, image_size, 3) if image_size is not None else first.shape
    if image_size is not None:
        warn_resized([header_size(p) for p in paths], paths, image_size)

    def write(tmp: str) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), *shape))
        for i, path in enumerate(paths):
            image = first if i == 0 else load_image(path)
            if image_size is not None:
                image = resize_array(image, image_size)
            elif image.shape != shape:
                raise DataError(
                    f"{path}: image size {image.shape[1]}x{image.shape[0]} differs from {shape[1]}x{shape[0]} "
                    f"of {paths[0]}; set data.image_size to resize every image"
                )
            out[i] = image
        out.flush()
        del out

    replace_atomically(images_file, write)


def header_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


def cached_folder(root: str | Path, class_names: tuple[str, ...], image_size: int | None, cache_dir: Path) -> ImageSet:
    root, paths, labels = folder_listing(root, class_names)
    key = listing_key(root, paths, class_names, image_size)
    images_file, meta_file = cache_dir / f"images-{key}.npy", cache_dir / f"images-{key}.json"
    sources = [str(p.relative_to(root)) for p in paths]
    if images_file.is_file() and meta_file.is_file():
        try:
            cached = open_cache(images_file, meta_file, labels, sources)
            log.info("%s: images from the cache %s", root, images_file)
            return ImageSet(cached, np.asarray(labels, dtype=np.int64), sources, class_names, site=sites_of(sources))
        except (OSError, ValueError, UnicodeDecodeError) as err:  # truncated, damaged or another listing's
            log.warning("image cache %s is damaged (%s); decoding the images again", images_file, err)
    log.info("%s: decoding %d images once into the cache %s", root, len(paths), images_file)
    build(images_file, paths, image_size)
    text = json.dumps({"root": str(root), "labels": labels, "sources": sources})
    replace_atomically(meta_file, lambda tmp: Path(tmp).write_text(text))
    images = np.load(images_file, mmap_mode="r")
    return ImageSet(images, np.asarray(labels, dtype=np.int64), sources, class_names, site=sites_of(sources))


def open_cache(images_file: Path, meta_file: Path, labels: list[int], sources: list[str]) -> np.ndarray:
    """The cached images, memory-mapped (never unpickled), checked against this listing."""
    meta = json.loads(meta_file.read_text())
    if not isinstance(meta, dict) or meta.get("labels") != labels or meta.get("sources") != sources:
        raise ValueError("its listing is not this folder's")
    images = np.load(images_file, mmap_mode="r", allow_pickle=False)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels) or images.shape[-1] != 3:
        raise ValueError(f"holds {images.dtype} {images.shape}")
    return images
