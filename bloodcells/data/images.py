"""Images in memory and single image files: the ``ImageSet`` every reader returns, decoding
one file (truncated, oversized, 16-bit and RGBA files handled), checks of arrays and labels,
and the listing of a class-folder tree. Shared by the readers and the image cache."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from bloodcells import CLASS_NAMES
from bloodcells.core.errors import DataError
from bloodcells.data.resize import resize_array

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass
class ImageSet:
    """Images (N x H x W x 3 uint8), integer labels, and where each image came from."""

    images: np.ndarray
    labels: np.ndarray
    sources: list[str]
    class_names: tuple[str, ...] = CLASS_NAMES
    split: np.ndarray | None = None
    """Optional per-image split name ('train'/'val'/'test') that the data brings."""
    site: np.ndarray | None = None
    """Optional per-image source (laboratory, dataset) that the data brings: evaluate reports
    metrics per source."""

    def __len__(self) -> int:
        return len(self.labels)


def to_rgb(images: np.ndarray, where: str) -> np.ndarray:
    """Return N x H x W x 3 uint8, converting grayscale and RGBA (see module docstring)."""
    if images.ndim == 3:
        log.warning("%s: grayscale images (N x H x W); replicating to 3 channels", where)
        return np.repeat(images[..., None], 3, axis=-1)
    if images.ndim != 4:
        raise DataError(f"{where}: images must be N x H x W x 3, got shape {images.shape}")
    channels = images.shape[-1]
    if channels == 3:
        return images
    if channels == 1:
        log.warning("%s: single-channel images; replicating to 3 channels", where)
        return np.repeat(images, 3, axis=-1)
    if channels == 4:
        log.warning("%s: RGBA images; dropping the alpha channel", where)
        return np.ascontiguousarray(images[..., :3])
    raise DataError(f"{where}: images must have 1, 3 or 4 channels, got shape {images.shape}")


def check_images(images: np.ndarray, where: str) -> np.ndarray:
    if images.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8 (0-255), got dtype {images.dtype}")
    images = to_rgb(images, where)
    if len(images) == 0:
        raise DataError(f"{where}: holds no images")
    return images


def check_labels(labels: np.ndarray, n_images: int, n_classes: int, where: str) -> np.ndarray:
    """Accept N or N x 1 integer labels in [0, n_classes); reject one-hot and anything else."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{where}: labels must have shape N or N x 1, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and np.all(np.mod(labels, 1) == 0):
            labels = labels.astype(np.int64)
        else:
            raise DataError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    if len(labels) != n_images:
        raise DataError(f"{where}: {n_images} images but {len(labels)} labels")
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"{where}: label {int(labels[i])} at index {i} is outside the class range "
            f"0..{n_classes - 1} ({len(bad)} such labels)"
        )
    return labels.astype(np.int64)


def wide_to_uint8(pixels: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """A 16-bit, 32-bit or float grayscale image as 8-bit RGB. PIL's own conversion clips
    every value above 255, so a 16-bit scan would come out all white: scale instead (16-bit
    by 1/257, exactly what 8 -> 16 bit multiplies by; other ranges by their maximum)."""
    values = pixels.astype(np.float64)
    if not np.isfinite(values).all() or values.min() < 0:
        raise DataError(f"{path}: {mode} image with negative or non-finite values; save it as 8-bit RGB")
    top = 65535.0 if mode.startswith("I;16") or values.max() <= 65535 and mode == "I" else max(values.max(), 1.0)
    if mode == "F" and values.max() <= 1.0:
        top = 1.0
    gray = np.clip(np.floor(values * (255.0 / top) + 0.5), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def load_image(path: Path | str, data: BinaryIO | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Decode one image file fully (truncated files fail here, not later in a worker); with
    ``data``, decode those bytes and name them ``path`` in messages (an upload). An image of
    more than ``max_pixels`` pixels is refused before it is decoded."""
    try:
        with warnings.catch_warnings():
            if max_pixels is not None:  # the refusal below says it; PIL's warning before it would be noise
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path if data is None else data)
        with im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise DataError(
                    f"{path}: {im.width}x{im.height} image ({im.width * im.height / 1e6:.0f} megapixels) is larger "
                    f"than the {max_pixels / 1e6:.0f} megapixels taken here; crop it to the cell"
                )
            im.load()
            mode = im.mode
            if mode in ("L", "LA", "I;16", "I;16B", "I;16L", "I", "F"):
                log.warning("%s: grayscale image; replicating to 3 channels", path)
            elif mode in ("RGBA", "PA"):
                log.warning("%s: RGBA image; dropping the alpha channel", path)
            if mode.startswith("I;16") or mode in ("I", "F"):
                return wide_to_uint8(np.asarray(im), mode, path)
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as err:
        raise DataError(f"{path}: refused, image too large to decode safely ({err})") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image (its content is no image format PIL reads)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: unreadable or truncated image file ({err})") from None


def stack_images(arrays: list[np.ndarray], paths: list[Path], image_size: int | None) -> np.ndarray:
    """Stack decoded images; resize to ``image_size`` if given (with a warning that counts
    them), else require one common size."""
    if image_size is not None:
        warn_resized([a.shape[:2] for a in arrays], paths, image_size)
        arrays = [resize_array(a, image_size) for a in arrays]
    first = arrays[0].shape
    for a, p in zip(arrays, paths):
        if a.shape != first:
            raise DataError(
                f"{p}: image size {a.shape[1]}x{a.shape[0]} differs from {first[1]}x{first[0]} "
                f"of {paths[0]}; set data.image_size to resize every image"
            )
    return np.stack(arrays)


def warn_resized(shapes: list[tuple[int, ...]], where: list, image_size: int) -> None:
    """Say how many images are not image_size x image_size, and how many are upscaled."""
    other = [i for i, sh in enumerate(shapes) if tuple(sh) != (image_size, image_size)]
    if not other:
        return
    small = [i for i in other if min(shapes[i]) < image_size]
    log.warning(
        "%d images are not %dx%d and are centre-cropped and resized to it (data.image_size), e.g. %s (%dx%d)",
        len(other),
        image_size,
        image_size,
        where[other[0]],
        shapes[other[0]][1],
        shapes[other[0]][0],
    )
    if small:
        i = min(small, key=lambda j: min(shapes[j]))
        log.warning(
            "%d of them are smaller and get upscaled, the smallest %s (%dx%d): check they are cell crops",
            len(small),
            where[i],
            shapes[i][1],
            shapes[i][0],
        )


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def is_site_level(folders: list[Path], class_names: tuple[str, ...]) -> bool:
    """``root/<site>/<class>/``: no top folder is a class, and every one holds only class folders."""
    if not folders or any(p.name in class_names for p in folders):
        return False
    inner = [sorted(q for q in p.iterdir() if q.is_dir()) for p in folders]
    return all(sub and all(q.name in class_names for q in sub) for sub in inner)


def class_folders(root: Path, class_names: tuple[str, ...]) -> list[Path]:
    """``root/<class>/`` folders, or ``root/<site>/<class>/`` when the tree has a source level."""
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if is_site_level(folders, class_names):
        return [q for p in folders for q in sorted(q for q in p.iterdir() if q.is_dir())]
    unknown = [p.name for p in folders if p.name not in class_names]
    if unknown:
        raise DataError(f"{root}: class folders {unknown} are not among the class names {list(class_names)}")
    if not folders:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/*.jpg)")
    return folders


def folder_listing(root: str | Path, class_names: tuple[str, ...]) -> tuple[Path, list[Path], list[int]]:
    """The image files of ``root/<class>/`` (or ``root/<site>/<class>/``: images from several
    sources, reported per source by evaluate) and their labels, checked (no decoding)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    paths, labels = [], []
    for folder in class_folders(root, class_names):
        files = list_images(folder)
        nested = [f for f in files if f.parent != folder]
        if nested:
            raise DataError(
                f"{nested[0].parent}: images in a subfolder of class folder '{folder.name}' "
                f"({len(nested)} such images); a class folder must hold its images directly"
            )
        if not files:
            raise DataError(f"{folder}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        paths += files
        labels += [class_names.index(folder.name)] * len(files)
    return root, paths, labels


def sites_of(sources: list[str]) -> np.ndarray | None:
    """The source (site) of each image of a ``root/<site>/<class>/file`` tree, else None."""
    parts = [Path(s).parts for s in sources]
    return np.array([p[0] for p in parts]) if parts and all(len(p) == 3 for p in parts) else None
