"""The project's one image reader and one PNG writer: `load_image` → uint8 H×W×3 RGB, `write_png`.

Accepted: anything Pillow reads (PNG, JPEG, WebP, TIFF, BMP, GIF: first frame), with OpenCV as a
fallback decoder (e.g. some 16-bit or float TIFFs). Normalisation, in this order:

- EXIF orientation is applied (a phone photo shot in portrait comes out upright);
- grey, 1-bit, palette, CMYK, YCbCr, LAB → RGB;
- 16-bit (and 32-bit integer) images are scaled to 8 bits (value * 255 / 65535);
  float images are taken as [0, 1] when their maximum is ≤ 1, else as [0, 255], and clipped;
- transparency (RGBA, LA, palette with a transparent index) is **composited on white**, so a
  transparent background compares as white, not as whatever colour hides under alpha = 0.

Images with more than `max_pixels` pixels (default `MAX_PIXELS`, 150 MP) are refused before their
pixel data is decoded (a decompression bomb costs nothing): the size comes from Pillow's header
parse, or for the formats only OpenCV reads (Radiance HDR, PFM, PNM, Sun raster, OpenEXR) from
`_declared_size`; a file whose size cannot be read from its header is never decoded. The cap is the
one place servers and the CLI share: `load_image(path, max_pixels=...)` raising `ImageInputError`. Downscaling large images for detection
is the detector's job; boxes are always reported in the original image's pixels.

Every user-caused problem (missing, empty, a directory, not an image, corrupt data, too large) raises
`SpotdiffError("<path>: <problem>; <fix>")`.

`write_png(path, rgb)` writes atomically (temporary sibling + rename, `spotdiff.fsutil`), and the
same pixels always give the same bytes: no timestamp, no text chunks, fixed compression.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from pathlib import Path

import numpy as np

from spotdiff.errors import SpotdiffError
from spotdiff.fsutil import atomic_path

MAX_PIXELS = 150_000_000
# OpenCV's own decoder cap, a second guard behind the header checks (read when cv2 is first imported).
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))


class ImageInputError(SpotdiffError):
    """An image file that cannot be used: missing, empty, not an image, corrupt, or too large."""

_FIX_FORMAT = "pass a PNG, JPEG, WebP or TIFF image"


def _fail(path: Path, problem: str, fix: str) -> SpotdiffError:
    return ImageInputError(f"{path}: {problem}; {fix}")


def check_file(path: str | Path, what: str = "image") -> Path:
    """Check that `path` is an existing, non-empty, readable regular file; return it as a Path."""
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise _fail(path, "a symbolic link to nothing (its target is missing, or the links loop)",
                        f"pass the {what} file itself")
        raise _fail(path, "no such file", f"check the {what} path")
    if path.is_dir():
        raise _fail(path, "is a directory, not an image file", f"pass the {what} file itself")
    if not path.is_file():
        raise _fail(path, "is not a regular file", f"pass an {what} file")
    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except PermissionError:
        raise _fail(path, "permission denied", "make the file readable") from None
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})", f"check the {what} file") from None
    if size == 0:
        raise _fail(path, "the file is empty (0 bytes)", f"pass a complete {what} file")
    return path


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale any numeric array (H×W or H×W×C) to uint8 following the module's rules."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        a = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
        a *= scale
        a += 0.5
        return np.clip(a, 0, 255, out=a).astype(np.uint8)
    # Integers wider than 8 bits: 16-bit range (a 32-bit "I" image from a 16-bit PNG stays < 65536).
    top = 65535.0 if arr.size == 0 or arr.max() <= 65535 else float(np.iinfo(arr.dtype).max)
    a = arr.astype(np.float32)
    a *= 255.0 / top
    a += 0.5
    return np.clip(a, 0, 255, out=a).astype(np.uint8)


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float32)[..., None] / 255.0
    return np.clip(rgb.astype(np.float32) * a + 255.0 * (1.0 - a) + 0.5, 0, 255).astype(np.uint8)


def _grey_or_rgb_to_rgb(arr: np.ndarray) -> np.ndarray:
    """uint8 H×W, H×W×1/2/3/4 (grey, grey+alpha, RGB, RGBA) → H×W×3, alpha composited on white."""
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    c = arr.shape[2]
    if c == 1:
        return np.repeat(arr, 3, axis=2)
    if c == 2:
        return _composite_on_white(np.repeat(arr[..., :1], 3, axis=2), arr[..., 1])
    if c == 3:
        return arr
    return _composite_on_white(arr[..., :3], arr[..., 3])


def _pil_to_rgb(img) -> np.ndarray:

    mode = img.mode
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA" if ("transparency" in img.info or mode == "PA") else "RGB")
        mode = img.mode
    elif mode == "1":
        img = img.convert("L")
        mode = "L"
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
        mode = "RGB"
    elif mode == "L" and "transparency" in img.info:
        img = img.convert("LA")
        mode = "LA"
    elif mode == "RGB" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"

    if mode in ("L", "LA", "RGB", "RGBA", "RGBa", "La"):
        if mode in ("RGBa", "La"):  # premultiplied alpha
            img = img.convert("RGBA" if mode == "RGBa" else "LA")
        return _grey_or_rgb_to_rgb(np.asarray(img))
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img)
        if mode.startswith("I;16"):
            arr = arr.astype(np.uint16)
        return _grey_or_rgb_to_rgb(_to_uint8(arr))
    # Anything else Pillow knows how to turn into RGB.
    return np.asarray(img.convert("RGB"))


def _declared_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the header of a format OpenCV decodes and Pillow does not (Radiance HDR,
    PFM, PNM, Sun raster, OpenEXR); None when the header is not one of these or cannot be parsed.

    The OpenCV fallback only decodes a file whose size is known before decoding (from Pillow's header
    or from here), so no file can make it allocate more than the cap allows."""
    import re
    import struct

    with open(path, "rb") as fh:
        head = fh.read(65536)
    try:
        if head.startswith((b"#?RADIANCE", b"#?RGBE")):
            m = re.search(rb"\n\n([-+][XY]) +(\d+) +([-+][XY]) +(\d+)", head)
            if not m:
                return None
            a, b = int(m.group(2)), int(m.group(4))
            return (b, a) if m.group(1).endswith(b"Y") else (a, b)
        if head[:2] in (b"PF", b"Pf") or (head[:1] == b"P" and head[1:2] in b"1234567"):
            text = re.sub(rb"#[^\n]*", b" ", head[2:2048])
            if head[1:2] == b"7":  # PAM: WIDTH / HEIGHT lines
                w = re.search(rb"WIDTH\s+(\d+)", text)
                h = re.search(rb"HEIGHT\s+(\d+)", text)
                return (int(w.group(1)), int(h.group(1))) if w and h else None
            nums = text.split()
            return (int(nums[0]), int(nums[1]))
        if head[:4] == b"\x59\xa6\x6a\x95":  # Sun raster
            w, h = struct.unpack(">II", head[4:12])
            return (w, h)
        if head[:4] == b"\x76\x2f\x31\x01":  # OpenEXR: the dataWindow attribute (box2i)
            i = head.find(b"dataWindow\x00box2i\x00")
            if i < 0:
                return None
            x0, y0, x1, y1 = struct.unpack("<iiii", head[i + 21:i + 37])
            return (x1 - x0 + 1, y1 - y0 + 1)
    except (ValueError, IndexError, struct.error):
        return None
    return None


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_native_stderr():
    """Hold back what native decoders write straight to file descriptor 2 (libpng's "libpng error:",
    libtiff's and OpenCV's "[ERROR]" lines) while OpenCV decodes: the caller reports a failure as
    one line of its own. Python's own sys.stderr is untouched."""
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all
            yield
            return
        try:
            with open(os.devnull, "wb") as null:
                os.dup2(null.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _read_with_opencv(path: Path) -> np.ndarray | None:
    """Fallback decoder for files Pillow refuses; None when OpenCV cannot decode it either."""
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)
    with _quiet_native_stderr():
        arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if arr is None:
        return None
    arr = _to_uint8(arr)
    if arr.ndim == 3 and arr.shape[2] >= 3:  # OpenCV gives BGR(A)
        arr = arr[..., [2, 1, 0] + ([3] if arr.shape[2] == 4 else [])]
    return _grey_or_rgb_to_rgb(arr)


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header only, after EXIF orientation; validates like `load_image`."""
    from PIL import Image, UnidentifiedImageError

    path = check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                try:
                    orientation = img.getexif().get(0x0112, 1)
                except Exception:
                    orientation = 1
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise _fail(path, f"not a readable image ({type(exc).__name__})", _FIX_FORMAT) from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file into a uint8 H×W×3 RGB array (see the module docstring for the rules)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = check_file(path)
    too_large_fix = (f"downscale it below {max_pixels:,} pixels first "
                     "(e.g. `convert in.png -resize 50% out.png`)")
    arr: np.ndarray | None = None
    pil_problem = ""
    declared: tuple[int, int] | None = None  # (w, h) from a header, checked against the cap
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Pillow's own global cap is left alone (changing it per call is not thread-safe, and
            # `spotdiff serve` loads in threads): the size is checked here, after the header is read
            # and before any pixel is decoded.
            with Image.open(path) as img:
                w, h = img.size
                declared = (w, h)
                if w <= 0 or h <= 0:
                    raise _fail(path, f"the image has no pixels ({w}×{h})", _FIX_FORMAT)
                if w * h > max_pixels:
                    raise _fail(path, f"too large: {w}×{h} = {w * h:,} pixels exceeds the cap of "
                                      f"{max_pixels:,}", too_large_fix)
                img.seek(0)  # animated GIF/WebP/multi-page TIFF: first frame
                img.load()
                img = ImageOps.exif_transpose(img) or img
                arr = _pil_to_rgb(img)
    except SpotdiffError:
        raise
    except Image.DecompressionBombError:
        raise _fail(path, "too large (Pillow refuses it as a decompression bomb)", too_large_fix) from None
    except UnidentifiedImageError:
        pil_problem = "not an image file Pillow or OpenCV can read"
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, MemoryError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        pil_problem = f"corrupt or truncated image data ({detail})"
    if arr is None:
        if declared is None:
            declared = _declared_size(path)
            if declared is not None:
                w, h = declared
                if w <= 0 or h <= 0:
                    raise _fail(path, f"the image has no pixels ({w}×{h})", _FIX_FORMAT)
                if w * h > max_pixels:
                    raise _fail(path, f"too large: {w}×{h} = {w * h:,} pixels exceeds the cap of "
                                      f"{max_pixels:,}", too_large_fix)
        try:
            # Only a file whose size is known (and within the cap) before decoding reaches OpenCV.
            arr = _read_with_opencv(path) if declared is not None else None
        except Exception:
            arr = None
        if arr is None:
            fix = (_FIX_FORMAT if pil_problem.startswith("not an image")
                   else "re-export or re-download the image")
            raise _fail(path, pil_problem or "not a readable image", fix)
        if arr.shape[0] * arr.shape[1] > max_pixels:
            raise _fail(path, f"too large: {arr.shape[1]}×{arr.shape[0]} pixels exceeds the cap of "
                              f"{max_pixels:,}", too_large_fix)
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise _fail(path, f"unexpected decoded shape {arr.shape}", _FIX_FORMAT)
    return arr


def load_mask(path: str | Path, size: tuple[int, int], what: str = "ignore mask",
              max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a mask image as a bool H×W array (True where the pixel is non-zero / not black).

    `size` is the (width, height) it must have; a mismatch raises `SpotdiffError`.
    """
    path = Path(path)
    rgb = load_image(path, max_pixels=max_pixels)
    h, w = rgb.shape[:2]
    if (w, h) != tuple(size):
        raise _fail(path, f"{what} is {w}×{h} but the image it applies to is {size[0]}×{size[1]}",
                    f"make the {what} the same size as the first image (white = ignore)")
    return rgb.max(axis=2) > 127


def write_png(path: str | Path, rgb: np.ndarray, compress_level: int = 1) -> Path:
    """Write a uint8 H×W×3 RGB (or H×W grey, H×W×4 RGBA) array as a PNG, atomically; returns `path`.

    Deterministic: the same pixels and `compress_level` (zlib 0-9; default 1, speed over size) give the
    same bytes — Pillow writes no time or software chunk."""
    arr = np.ascontiguousarray(rgb)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"write_png: expected uint8 H×W×3 RGB (or H×W, H×W×4), got {arr.dtype} {arr.shape}")
    path = Path(path)
    with atomic_path(path) as tmp:
        write_png_to(tmp, arr, compress_level)
    return path


def write_png_to(path: str | Path, rgb: np.ndarray, compress_level: int = 1) -> None:
    """`write_png` without the temporary sibling: for a path that already is one (`fsutil.atomic_paths`)."""
    from PIL import Image

    arr = np.ascontiguousarray(rgb)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"write_png: expected uint8 H×W×3 RGB (or H×W, H×W×4), got {arr.dtype} {arr.shape}")
    Image.fromarray(arr).save(path, format="PNG", compress_level=compress_level)


def save_png_atomic(path: str | Path, image: np.ndarray) -> Path:
    """`write_png` for any numeric array: scaled to uint8 first by the reader's rules (`_to_uint8`)."""
    arr = np.asarray(image)
    return write_png(path, arr if arr.dtype == np.uint8 else _to_uint8(arr))
