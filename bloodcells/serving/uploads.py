"""Uploaded files: the multipart body a browser sends, each file's name made safe, and the
images decoded and resized exactly as ``predict`` reads a folder of the same files."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from pathlib import PurePosixPath

import numpy as np

from bloodcells.core.errors import DataError
from bloodcells.data.images import IMAGE_SUFFIXES, load_image, stack_images


class UploadError(ValueError):
    """A request the page cannot use, with its HTTP status and a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    name: str
    data: bytes


@dataclass
class DecodedUploads:
    """Images (N x S x S x 3 uint8) sorted by their names as ``predict`` sorts a folder, and
    a message for every file that could not be used."""

    images: np.ndarray | None
    sources: list[str]
    errors: list[dict] = field(default_factory=list)


def safe_source(name: str) -> str:
    """A browser-sent file name (``folder/sub/cell.jpg`` when a folder was chosen) as a
    relative path with no ``..``, root or empty part; the top folder is dropped, as
    ``predict input=folder`` names files relative to the folder."""
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".", "..", "/")]
    if len(parts) > 1:
        parts = parts[1:]
    return "/".join(parts) or "unnamed"


def parse_multipart(content_type: str, body: bytes, max_files: int) -> list[Upload]:
    """The files of a ``multipart/form-data`` body (every part with a file name)."""
    if not content_type.startswith("multipart/form-data"):
        raise UploadError(400, "send the images as multipart/form-data (a form with file fields)")
    message = BytesParser(policy=policy.HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise UploadError(400, "the upload is not a readable multipart form")
    uploads = [
        Upload(safe_source(part.get_filename()), part.get_payload(decode=True) or b"")
        for part in message.iter_parts()
        if part.get_filename() is not None
    ]
    if not uploads:
        raise UploadError(400, "no image in the upload: choose or drop at least one file")
    if len(uploads) > max_files:
        raise UploadError(413, f"{len(uploads)} files in one upload; the page takes up to {max_files} (max_files)")
    return uploads


def decode_one(upload: Upload, max_pixels: int) -> np.ndarray:
    if PurePosixPath(upload.name).suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(f"{upload.name}: not an image file name (expected {', '.join(IMAGE_SUFFIXES)})")
    if not upload.data:
        raise DataError(f"{upload.name}: empty file (0 bytes)")
    return load_image(upload.name, io.BytesIO(upload.data), max_pixels)


def decode_uploads(uploads: list[Upload], image_size: int, max_pixels: int) -> DecodedUploads:
    """Decode every upload; the readable ones are resized to ``image_size`` as ``predict``
    resizes them, the others are reported one message each."""
    decoded, errors, seen = {}, [], set()
    for upload in uploads:
        if upload.name in seen:
            errors.append({"source": upload.name, "error": f"{upload.name}: sent twice; kept the first"})
            continue
        seen.add(upload.name)
        try:
            decoded[upload.name] = decode_one(upload, max_pixels)
        except DataError as err:
            errors.append({"source": upload.name, "error": str(err)})
    names = sorted(decoded, key=PurePosixPath)  # predict's order for a folder of these files
    images = stack_images([decoded[n] for n in names], names, image_size) if names else None
    return DecodedUploads(images, names, errors)
