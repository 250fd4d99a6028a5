"""Images for the tests: the astronaut photo with a cat's face pasted in (a known change), random
image pairs written to a folder, a PNG that only claims to be huge, and IoU against a known box."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

PASTE = (300, 200, 400, 280)  # x1, y1, x2, y2 of the pasted patch in the 512×512 astronaut photo


def astronaut_pair() -> tuple[np.ndarray, np.ndarray]:
    """(A, B): scikit-image's astronaut photo, and the same photo with a patch of the cat (chelsea)
    pasted over `PASTE`."""
    import skimage.data

    a = skimage.data.astronaut()
    b = a.copy()
    x1, y1, x2, y2 = PASTE
    b[y1:y2, x1:x2] = skimage.data.chelsea()[100:100 + (y2 - y1), 150:150 + (x2 - x1)]
    return a, b


def iou(box, truth) -> float:
    """IoU of one xyxy box with another."""
    from spotdiff.boxes import iou_matrix

    return float(iou_matrix(np.asarray(box, float)[None], np.asarray(truth, float)[None])[0, 0])


def write_image_pair(folder: Path, size: tuple[int, int] = (72, 96),
                     change: tuple[int, int, int, int] = (20, 50, 30, 70),
                     value: int = 250) -> tuple[Path, Path]:
    """`folder/a.png` (random RGB noise, h×w = `size`, seed 0) and `folder/b.png`: the same with
    rows y1:y2, columns x1:x2 (`change` = (y1, y2, x1, x2)) set to `value`. Returns both paths."""
    from PIL import Image

    rng = np.random.default_rng(0)
    a = (rng.random((*size, 3)) * 255).astype(np.uint8)
    b = a.copy()
    y1, y2, x1, x2 = change
    b[y1:y2, x1:x2] = value
    Image.fromarray(a).save(folder / "a.png")
    Image.fromarray(b).save(folder / "b.png")
    return folder / "a.png", folder / "b.png"


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width×height but carries almost no data (a decompression bomb shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path
