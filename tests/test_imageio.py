"""spotdiff.imageio: every image flavour users send comes out uint8 H×W×3 RGB, every bad file is one
clear SpotdiffError naming the path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.images import png_header_only
from spotdiff.errors import SpotdiffError
from spotdiff.imageio import load_image, load_mask, read_image_size, save_png_atomic


def _rgb(h: int = 24, w: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- good files


@pytest.mark.parametrize("fmt,ext,exact", [("PNG", "png", True), ("TIFF", "tif", True),
                                           ("WEBP", "webp", False), ("JPEG", "jpg", False),
                                           ("BMP", "bmp", True)])
def test_rgb_formats(tmp_path, fmt, ext, exact):
    img = _rgb()
    img[:, :16] = (200, 30, 60)  # a flat area survives lossy codecs
    p = tmp_path / f"x.{ext}"
    Image.fromarray(img).save(p, format=fmt, **({"quality": 95} if not exact else {}))
    out = load_image(p)
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    if exact:
        np.testing.assert_array_equal(out, img)
    else:
        assert np.abs(out[4:20, 2:12].astype(int) - (200, 30, 60)).mean() < 12


def test_grey_and_one_bit(tmp_path):
    g = (np.arange(24 * 32).reshape(24, 32) % 256).astype(np.uint8)
    Image.fromarray(g).save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (24, 32, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)
    Image.fromarray(g > 100).save(tmp_path / "b.png")  # mode "1"
    out = load_image(tmp_path / "b.png")
    assert set(np.unique(out)) <= {0, 255} and out[..., 0].astype(bool).tolist() == (g > 100).tolist()


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255            # red
    rgba[:, :5, 3] = 0            # left half fully transparent
    rgba[:, 5:, 3] = 255          # right half opaque
    rgba[0, 9, 3] = 128           # one half-transparent pixel
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.shape == (10, 10, 3)
    assert (out[:, :5] == 255).all()                      # white, not the hidden red
    assert (out[1:, 5:] == (255, 0, 0)).all()
    assert tuple(out[0, 9]) == (255, 127, 127) or tuple(out[0, 9]) == (255, 128, 128)
    la = np.zeros((4, 4, 2), np.uint8)
    la[..., 1] = 0
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert (load_image(tmp_path / "la.png") == 255).all()


def test_sixteen_bit_scaled_to_eight(tmp_path):
    import cv2

    g16 = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(3, axis=0)
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    out = load_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    rgb16 = np.zeros((3, 4, 3), np.uint16)
    rgb16[..., 0] = 65535  # red in RGB order
    cv2.imwrite(str(tmp_path / "c16.tif"), rgb16[..., ::-1].copy())  # OpenCV writes BGR
    out = load_image(tmp_path / "c16.tif")
    assert (out == (255, 0, 0)).all()


def test_float_tiff(tmp_path):
    f = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    Image.fromarray(f, mode="F").save(tmp_path / "f.tif")
    out = load_image(tmp_path / "f.tif")
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255


def test_palette_with_and_without_transparency(tmp_path):
    img = _rgb(8, 8)
    pal = Image.fromarray(img).quantize(colors=16)
    pal.save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pt.png", transparency=0)
    out_t = load_image(tmp_path / "pt.png")
    idx = np.asarray(pal)
    assert (out_t[idx == 0] == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high
    stored[:5, :5] = (255, 0, 0)              # red marker top-left as stored
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "r.jpg")
    assert out.shape == (40, 20, 3)
    assert read_image_size(tmp_path / "r.jpg") == (20, 40)
    assert out[:5, -5:, 0].mean() > 200 and out[:5, :5, 0].mean() < 50  # marker now top-right


def test_first_frame_of_animation(tmp_path):
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    out = load_image(tmp_path / "a.gif")
    assert tuple(out[0, 0]) == (255, 0, 0)


def test_save_png_atomic_round_trip(tmp_path):
    img = _rgb()
    p = save_png_atomic(tmp_path / "sub" / "o.png", img)
    np.testing.assert_array_equal(load_image(p), img)
    assert sorted(x.name for x in p.parent.iterdir()) == ["o.png"]  # no temp file left


def test_load_mask(tmp_path):
    m = np.zeros((24, 32), np.uint8)
    m[5:10, 5:10] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    mask = load_mask(tmp_path / "m.png", (32, 24))
    assert mask.dtype == bool and mask.sum() == 25
    with pytest.raises(SpotdiffError, match=r"m\.png: ignore mask is 32×24 but the image .* is 40×24"):
        load_mask(tmp_path / "m.png", (40, 24))


# ---------------------------------------------------------------- bad files


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = tmp_path / "good.png"
    Image.fromarray(_rgb(64, 64)).save(good)
    data = good.read_bytes()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    corrupt[60:200] = bytes(140)
    (tmp_path / "corrupt.png").write_bytes(bytes(corrupt))
    (tmp_path / "notes.png").write_text("this is a text file, not a picture\n")
    png_header_only(tmp_path / "huge.png", 20000, 20000)
    return {
        "missing": (tmp_path / "nope.png", "no such file"),
        "empty": (tmp_path / "empty.png", "empty"),
        "directory": (tmp_path / "folder.png", "directory"),
        "truncated": (tmp_path / "truncated.png", "corrupt or truncated"),
        "corrupt": (tmp_path / "corrupt.png", "corrupt or truncated"),
        "text": (tmp_path / "notes.png", "not an image"),
        "huge": (tmp_path / "huge.png", "too large"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "directory", "truncated", "corrupt", "text", "huge"])
def test_bad_files_raise_one_clear_error(tmp_path, case):
    path, words = _bad_files(tmp_path)[case]
    with pytest.raises(SpotdiffError) as info:
        load_image(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and words in msg and ";" in msg and "\n" not in msg


def test_pixel_cap_is_checked_before_decoding(tmp_path):
    p = tmp_path / "big.png"
    Image.fromarray(_rgb(100, 100)).save(p)
    assert load_image(p, max_pixels=10_000).shape == (100, 100, 3)
    with pytest.raises(SpotdiffError, match="10,000 pixels exceeds the cap of 9,999"):
        load_image(p, max_pixels=9_999)
