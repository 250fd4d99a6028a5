"""Files a careless or hostile user might hand to spotdiff: images whose headers declare a huge size
in every format the loader accepts, broken images, a pickle that would run code, archives that
escape their folder. Each generator returns bytes (or writes a path) and never allocates the size
it declares.
"""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

HUGE = 60_000  # a side: HUGE² = 3.6 GP, 24 × the loader's 150 MP cap (and ~11 GB as RGB)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _chunk(b"IEND", b""))


def jpeg(w: int, h: int) -> bytes:
    """A baseline JPEG's start: SOI, a quantisation table, SOF0 declaring w×h, a Huffman table, SOS."""
    dqt = b"\xff\xdb" + struct.pack(">H", 67) + b"\x00" + bytes([1] * 64)
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, h, w, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    dht = b"\xff\xc4" + struct.pack(">H", 20) + b"\x00" + bytes([1] + [0] * 15) + b"\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 12, 3) + b"\x01\x00\x02\x00\x03\x00" + b"\x00\x3f\x00"
    return b"\xff\xd8" + dqt + sof + dht + sos + b"\x00" * 64 + b"\xff\xd9"


def bmp(w: int, h: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 64, 0, 0, 54) + info + b"\0" * 64


def tiff(w: int, h: int) -> bytes:
    """An uncompressed RGB TIFF declaring w×h, one strip of 64 bytes."""
    tags = [(256, 4, w), (257, 4, h), (258, 3, 8), (259, 3, 1), (262, 3, 2), (273, 4, 8 + 2 + 9 * 12 + 4),
            (277, 3, 3), (278, 4, h), (279, 4, 64)]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        for tag, kind, value in tags) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0" * 64


def webp(w: int, h: int) -> bytes:
    """A real 4×4 lossless WebP (VP8L) whose header is patched to declare w×h (each at most 16384)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buf, format="WEBP", lossless=True)
    data = bytearray(buf.getvalue())
    i = data.find(b"VP8L") + 9  # chunk tag, size, 0x2f signature, then 14 + 14 bits of w-1, h-1
    bits = struct.unpack("<I", data[i:i + 4])[0]
    bits = (bits & ~((1 << 28) - 1)) | (w - 1) | ((h - 1) << 14)
    data[i:i + 4] = struct.pack("<I", bits)
    return bytes(data)


def gif(w: int, h: int) -> bytes:
    screen = struct.pack("<HHBBB", w, h, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + image + b"\x3b"


def hdr(w: int, h: int) -> bytes:
    return b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y %d +X %d\n" % (h, w) + b"\x02\x02\x00\x10" * 256


def pfm(w: int, h: int) -> bytes:
    return b"PF\n%d %d\n-1.0\n" % (w, h) + b"\0" * 64


def ppm(w: int, h: int) -> bytes:
    return b"P6\n%d %d\n255\n" % (w, h) + b"\0" * 64


def pgm(w: int, h: int) -> bytes:
    return b"P5\n# a comment\n%d %d\n255\n" % (w, h) + b"\0" * 64


def pam(w: int, h: int) -> bytes:
    return b"P7\nWIDTH %d\nHEIGHT %d\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n" % (w, h) + b"\0" * 64


def sun_raster(w: int, h: int) -> bytes:
    return struct.pack(">8I", 0x59A66A95, w, h, 24, min(w * h * 3, 2**32 - 1), 1, 0, 0) + b"\0" * 64


def exr(w: int, h: int) -> bytes:
    """An OpenEXR header whose dataWindow declares w×h (no pixel data)."""
    def attr(name: bytes, kind: bytes, value: bytes) -> bytes:
        return name + b"\0" + kind + b"\0" + struct.pack("<I", len(value)) + value
    box = struct.pack("<iiii", 0, 0, w - 1, h - 1)
    header = (attr(b"channels", b"chlist", b"R\0" + struct.pack("<iBBBBii", 1, 0, 0, 0, 0, 1, 1) + b"\0")
              + attr(b"compression", b"compression", b"\0") + attr(b"dataWindow", b"box2i", box)
              + attr(b"displayWindow", b"box2i", box) + attr(b"lineOrder", b"lineOrder", b"\0")
              + attr(b"pixelAspectRatio", b"float", struct.pack("<f", 1.0))
              + attr(b"screenWindowCenter", b"v2f", struct.pack("<ff", 0, 0))
              + attr(b"screenWindowWidth", b"float", struct.pack("<f", 1.0)) + b"\0")
    return b"\x76\x2f\x31\x01" + struct.pack("<I", 2) + header + b"\0" * 64


def tga(w: int, h: int) -> bytes:
    return struct.pack("<BBBHHBHHHHBB", 0, 0, 2, 0, 0, 0, 0, 0, w, h, 24, 0x20) + b"\0" * 64


def psd(w: int, h: int) -> bytes:
    return (b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3) + struct.pack(">III", 0, 0, 0)
            + struct.pack(">H", 0) + b"\0" * 64)


def sgi(w: int, h: int) -> bytes:
    head = struct.pack(">hBBHHHHii4x", 474, 0, 1, 3, w, h, 3, 0, 255) + b"\0" * 80
    return head + b"\0" * (512 - len(head)) + b"\0" * 64


def pcx(w: int, h: int) -> bytes:
    head = struct.pack("<BBBBHHHHHH", 10, 5, 1, 8, 0, 0, w - 1, h - 1, 72, 72) + b"\0" * 48
    head += struct.pack("<BBHH", 0, 3, w, 1)
    return head + b"\0" * (128 - len(head)) + b"\0" * 64


# Every format the loader accepts, each declaring a size far over the cap: (file name, bytes).
HUGE_DECLARED = {
    "huge.png": png(HUGE, HUGE), "huge.jpg": jpeg(HUGE, HUGE), "huge.bmp": bmp(HUGE, HUGE),
    "huge.tif": tiff(HUGE, HUGE), "huge.webp": webp(16384, 16384), "huge.gif": gif(65535, 65535),
    "huge.hdr": hdr(13000, 13000), "huge.pfm": pfm(HUGE, HUGE), "huge.ppm": ppm(HUGE, HUGE),
    "huge.pgm": pgm(HUGE, HUGE), "huge.pam": pam(HUGE, HUGE), "huge.ras": sun_raster(HUGE, HUGE),
    "huge.exr": exr(HUGE, HUGE), "huge.tga": tga(65535, 65535), "huge.psd": psd(HUGE, HUGE),
    "huge.sgi": sgi(65535, 65535), "huge.pcx": pcx(65535, 65535),
}


def real_png(w: int = 96, h: int = 72, seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def encoded(fmt: str, w: int = 96, h: int = 72, **save) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(buf, format=fmt, **save)
    return buf.getvalue()


class _Marker:
    """Unpickling this runs `open(path, "w")`: the file appearing means a pickle payload ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps({"format": "spotdiff-cyws/1", "model": {}, "state_dict": _Marker(marker)})
