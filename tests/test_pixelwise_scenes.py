"""The pixel-wise SSIM detector's defaults on generated scenes with known edits (`helpers.scenes`):
the edits are boxed; photometric changes, anti-aliasing, camera nudges and padding are not."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

from helpers.scenes import (
    EDIT_KINDS,
    camera_nudge,
    gradient_background,
    iou_one_to_many,
    make_scene,
    paste_textured_object,
    photo_background,
    random_shape,
    render,
    score_edits,
)
from spotdiff.methods.pixelwise import SsimDetector

SEEDS = (0, 1, 2, 3)


def _brighter(img: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(img.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def _overlapping_pairs(boxes: np.ndarray) -> int:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    ix = np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0])
    iy = np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1])
    over = (ix > 0) & (iy > 0)
    np.fill_diagonal(over, False)
    return int(over.sum()) // 2


def _largest_fraction(boxes: np.ndarray, img: np.ndarray) -> float:
    if len(boxes) == 0:
        return 0.0
    return float(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).max() / (img.shape[0] * img.shape[1]))


def _run_quietly(det: SsimDetector, a: np.ndarray, b: np.ndarray):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # auto registration never warns
        return det.run(a, b)


def _scene_scores(nudge: dict, photometric: float = 1.0, seeds=SEEDS) -> tuple[float, float, float]:
    """(recall over edits, precision over boxes, largest box / frame) of the defaults on scenes."""
    det = SsimDetector()
    found = correct = boxes = edits = 0
    largest = 0.0
    for seed in seeds:
        sc = make_scene(seed, k=5 + seed % 3)
        b = sc.image_b
        if nudge:
            b, _ = camera_nudge(b, **nudge)
        b = _brighter(b, photometric)
        res = _run_quietly(det, sc.image_a, b)
        f, c = score_edits(res.boxes_a, sc.edits)
        found, correct, boxes, edits = found + f, correct + c, boxes + len(res.boxes_a), edits + len(sc.edits)
        largest = max(largest, _largest_fraction(res.boxes_a, sc.image_a))
        assert _overlapping_pairs(res.boxes_a) == 0 and _overlapping_pairs(res.boxes_b) == 0
    return found / edits, correct / max(boxes, 1), largest


def test_scene_generator_edits_are_where_the_images_differ():
    sc = make_scene(0, k=6)
    assert len(sc.edits) == 6 and {k for k, _ in sc.edits} <= set(EDIT_KINDS)
    changed = np.any(sc.image_a != sc.image_b, axis=2)
    inside = np.zeros_like(changed)
    for _, regions in sc.edits:
        for x1, y1, x2, y2 in np.asarray(regions).astype(int):
            inside[max(y1 - 2, 0):y2 + 2, max(x1 - 2, 0):x2 + 2] = True
    assert changed.any() and not (changed & ~inside).any()


@pytest.mark.parametrize("make", ["scene", "photo"])
def test_identical_images_give_no_boxes_and_no_registration(make):
    img = make_scene(1).image_a if make == "scene" else photo_background(320, 240, 1)
    res = _run_quietly(SsimDetector(), img, img.copy())
    assert len(res.boxes_a) == 0 and len(res.boxes_b) == 0
    assert res.extras["align"] == "identity" and res.extras["align_requested"] == "auto"


@pytest.mark.parametrize("background", ["photo", "flat"])
@pytest.mark.parametrize("colours", [((230, 40, 40), (30, 30, 160)),  # high contrast
                                     ((200, 120, 90), (120, 160, 200))])  # near the background's grey
def test_pasted_textured_object_is_one_box_in_both_orders(background, colours):
    """The F8 case: a checkered ellipse (120×100) pasted, the whole image 8 % brighter."""
    bg = photo_background(640, 480, 3) if background == "photo" else np.full((480, 640, 3), (140, 135, 130),
                                                                             np.uint8)
    for period in (6, 10, 16):
        pasted, truth = paste_textured_object(bg, 300, 220, period=period, colours=colours)
        pasted = _brighter(pasted, 1.08)
        for a, b in ((bg, pasted), (pasted, bg)):
            res = _run_quietly(SsimDetector(), a, b)
            assert len(res.boxes_a) == 1 and len(res.boxes_b) == 1, (period, res.boxes_a)
            assert iou_one_to_many(truth, res.boxes_a)[0] >= 0.5
            assert iou_one_to_many(truth, res.boxes_b)[0] >= 0.5
            assert len(res.extras["regions"]) == 1 and res.extras["regions"][0]["label"] == 1


@pytest.mark.parametrize("make", ["scene", "photo"])
def test_global_photometric_changes_give_no_box(make):
    img = make_scene(2).image_a if make == "scene" else photo_background(480, 360, 2)
    stored = _jpeg(img, 95)  # what a camera or a web page hands over
    changes = {
        "brighter 15 %": _brighter(img, 1.15),
        "darker 20 %": _brighter(img, 0.8),
        "white balance": np.clip(img * np.array([1.08, 1.0, 0.9]), 0, 255).astype(np.uint8),
        "gamma 0.8": (255 * (img / 255.0) ** 0.8).astype(np.uint8),
        "less saturated": np.clip(0.7 * img + 0.3 * img.mean(axis=2, keepdims=True), 0, 255).astype(np.uint8),
    }
    det = SsimDetector()
    for name, b in changes.items():
        assert len(_run_quietly(det, img, b).boxes_a) == 0, name
    for quality in (75, 90):
        assert len(_run_quietly(det, stored, _jpeg(stored, quality)).boxes_a) == 0, f"JPEG {quality}"


def test_anti_aliasing_only_differences_give_no_box():
    det = SsimDetector()
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        bg = gradient_background(480, 360, rng)
        shapes = [random_shape(rng, 60 + 90 * i, 70 + 110 * j, 30, bg.reshape(-1, 3).mean(axis=0))
                  for i in range(5) for j in range(3)]
        smooth, jagged = render(bg, shapes), render(bg, shapes, antialias=False)
        assert np.any(smooth != jagged)
        assert len(_run_quietly(det, smooth, jagged).boxes_a) == 0


def test_scenes_with_known_edits():
    recall, precision, largest = _scene_scores({})
    assert recall >= 0.85 and precision >= 0.8 and largest <= 0.25


@pytest.mark.parametrize("nudge", [{"dx": 1}, {"dx": 3, "dy": -2}, {"dx": -5}, {"angle": 1.0},
                                   {"scale": 1.02}])
def test_camera_nudge_leaves_only_the_real_changes(nudge):
    recall, precision, largest = _scene_scores(nudge, seeds=SEEDS[:3])
    assert recall >= 0.85 and precision >= 0.8 and largest <= 0.25, (recall, precision, largest)


def test_scene_shifted_3px_and_brighter_6pct():
    """The F8 case that defeated `align: none`: 3 px shift + 6 % brightness."""
    recall, precision, largest = _scene_scores({"dx": 3}, photometric=1.06)
    assert recall >= 0.85 and precision >= 0.8 and largest <= 0.25


@pytest.mark.parametrize("pad", [cv2.BORDER_CONSTANT, cv2.BORDER_REFLECT])
def test_second_image_padded_by_five_rows(pad):
    """An inpainter pads to a multiple of 8: B is 5 rows taller; only the real change is boxed."""
    for seed in SEEDS[:3]:
        sc = make_scene(seed, k=2)
        b = cv2.copyMakeBorder(sc.image_b, 0, 5, 0, 0, pad, value=0)
        res = _run_quietly(SsimDetector(), sc.image_a, b)
        found, correct = score_edits(res.boxes_a, sc.edits)
        assert found == 2 and correct == len(res.boxes_a) == 2
        # B's boxes are in B's pixels: same place, B is only taller
        np.testing.assert_allclose(res.boxes_b, res.boxes_a, atol=1.5)


def test_a_changed_glyph_is_found_and_covered():
    """A few pixels of text are a change: one box, covering every pixel that differs."""
    ui = np.full((400, 600, 3), 245, np.uint8)
    cv2.rectangle(ui, (0, 0), (600, 40), (60, 90, 160), -1)
    for i, text in enumerate(["Name: Alice Smith", "Balance: 1,250.00 EUR", "Last login 12:04"]):
        cv2.putText(ui, text, (20, 90 + 50 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (30, 30, 30), 1, cv2.LINE_AA)
    edited = ui.copy()
    cv2.rectangle(edited, (118, 124), (132, 146), (245, 245, 245), -1)  # one character of "1,250.00"
    cv2.putText(edited, "7", (118, 140), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (30, 30, 30), 1, cv2.LINE_AA)
    changed = np.any(ui != edited, axis=2)
    assert 0 < changed.sum() < 200
    res = _run_quietly(SsimDetector(), ui, edited)
    assert len(res.boxes_a) == 1
    x1, y1, x2, y2 = res.boxes_a[0].astype(int)
    ys, xs = np.nonzero(changed)
    assert xs.min() >= x1 and xs.max() < x2 and ys.min() >= y1 and ys.max() < y2


def test_flat_and_tiny_images_fall_back_to_identity_quietly():
    flat = np.full((96, 96, 3), 128, np.uint8)
    other = flat.copy()
    other[30:60, 30:60] = 20
    res = _run_quietly(SsimDetector(), flat, other)
    assert res.extras["align"] == "identity" and res.extras["notes"]
    assert len(res.boxes_a) == 1 and iou_one_to_many(np.array([30, 30, 60, 60]), res.boxes_a)[0] >= 0.5
    tiny = np.zeros((16, 16, 3), np.uint8)
    tiny2 = tiny.copy()
    tiny2[4:10, 4:10] = 255
    res = _run_quietly(SsimDetector(), tiny, tiny2)
    assert res.extras["align"] == "identity" and len(res.boxes_a) == 1
