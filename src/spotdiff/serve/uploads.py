"""Uploaded bytes → a uint8 H×W×3 RGB image, with the limits a public service needs.

The content decides, never the file name or the declared type: the first bytes must be those of a
PNG, JPEG, WebP, TIFF, BMP or GIF file (`sniff`), else the upload is refused before any decoder sees
it. Decoding is `spotdiff.imageio.load_image` itself (its normalisation and its decompression-bomb
pixel cap, checked from the header before pixel data is decoded), on a private temporary file; its
one-line message is kept, with the temporary path replaced by the form field and the upload's name.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np

from spotdiff.errors import SpotdiffError
from spotdiff.imageio import load_image, load_mask

# magic bytes → format; WebP is RIFF....WEBP (checked below)
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"BM", "bmp"),
)
FORMATS = ("png", "jpeg", "webp", "tiff", "bmp", "gif")


class UploadError(SpotdiffError):
    """A refused upload; `status` is the HTTP status it answers with (400, 413, 415, 422)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def sniff(data: bytes) -> str | None:
    """The image format the content says (one of FORMATS), or None."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, fmt in _SIGNATURES:
        if data.startswith(magic):
            return fmt
    return None


def label(field: str, filename: str | None) -> str:
    """How messages name an upload: `image_a (photo.png)`; the name is trimmed to printable text."""
    name = re.sub(r"[^\w .()+,-]", "_", (filename or "").strip())[:80]
    return f"{field} ({name})" if name else field


def _checked(data: bytes, what: str, max_bytes: int) -> None:
    if not data:
        raise UploadError(f"{what}: the file is empty (0 bytes); upload a complete image", 400)
    if len(data) > max_bytes:
        raise UploadError(f"{what}: {len(data):,} bytes exceeds the upload cap of {max_bytes:,}; "
                          "send a smaller file (e.g. a JPEG, or downscaled)", 413)
    if sniff(data) is None:
        raise UploadError(f"{what}: not a PNG, JPEG, WebP, TIFF, BMP or GIF image (judged by its content, "
                          "not its name or type); upload one of those", 415)


def _decode(data: bytes, what: str, read) -> np.ndarray:
    fd, tmp = tempfile.mkstemp(prefix="spotdiff-upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            return read(Path(tmp))
        except SpotdiffError as exc:
            message = str(exc).replace(tmp, what)
            status = 413 if "too large" in message else 422
            raise UploadError(message, status) from None
    finally:
        os.unlink(tmp)


def decode_image(data: bytes, field: str, filename: str | None, max_bytes: int, max_pixels: int) -> np.ndarray:
    """The image in `data` (uint8 H×W×3 RGB); raises UploadError with the HTTP status to answer."""
    what = label(field, filename)
    _checked(data, what, max_bytes)
    return _decode(data, what, lambda p: load_image(p, max_pixels=max_pixels))


def decode_mask(data: bytes, field: str, filename: str | None, size: tuple[int, int], max_bytes: int,
                max_pixels: int) -> np.ndarray:
    """An ignore mask (bool H×W, white = ignore) the (width, height) `size` of image A."""
    what = label(field, filename)
    _checked(data, what, max_bytes)
    return _decode(data, what, lambda p: load_mask(p, size, max_pixels=max_pixels))
