"""The pixel-wise SSIM detector's defaults on puzzles from an independent generator (`helpers.puzzles`:
outlined cartoon landscapes, edits next to other objects, B photographed 3 px further and 6 % brighter).

The detector was tuned on seeds 0-19 of that generator; the figures asserted here come from seeds
100-109, which no tuning saw. Also: the registration's leftovers in the diagnostics, a registration
that is off by more than a pixel, neighbouring changes, and the fringe of small differences."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

from helpers.puzzles import (
    EDIT_KINDS,
    Thing,
    background,
    changed_pixels,
    covered_fraction,
    draw,
    make_puzzle,
    score_puzzle,
)
from helpers.scenes import iou_one_to_many
from spotdiff.methods import pixelwise
from spotdiff.methods.pixelwise import SsimDetector
from spotdiff.params import SsimParams

HELD_OUT = range(100, 110)  # never used for tuning (seeds 0-19 were)


def _run(det: SsimDetector, a: np.ndarray, b: np.ndarray):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # auto registration never warns
        return det.run(a, b)


def test_puzzle_generator_edits_and_uncovered_strips():
    pz = make_puzzle(0, shift=(0, 0), gain=1.0)
    assert {k for k, _ in pz.edits} <= set(EDIT_KINDS) and len(pz.edits) == 6
    changed = np.any(pz.image_a != pz.image_b, axis=2)
    inside = np.zeros_like(changed)
    for _, regions in pz.edits:
        for x1, y1, x2, y2 in np.asarray(regions).astype(int):
            inside[max(y1 - 1, 0):y2 + 1, max(x1 - 1, 0):x2 + 1] = True
    assert changed.any() and not (changed & ~inside).any()
    shifted = make_puzzle(0, shift=(3, 0), gain=1.06)
    # B's content is A's moved 3 px left: A's first 3 columns have no counterpart, nor B's last 3
    assert shifted.uncovered_a[:, :3].all() and not shifted.uncovered_a[:, 3:].any()
    assert shifted.uncovered_b[:, -3:].all() and not shifted.uncovered_b[:, :-3].any()
    np.testing.assert_allclose(shifted.edits_b[0][1][0][[0, 2]], np.clip(shifted.edits[0][1][0][[0, 2]] - 3, 0, 512))


def test_held_out_puzzles_shifted_3px_and_brighter_6pct():
    """The issue's goal: recall and precision ≥ 0.9 over ≥ 10 unseen puzzles, no scene below 0.7,
    no box in the strip with no counterpart."""
    det = SsimDetector()
    scores = []
    for seed in HELD_OUT:
        pz = make_puzzle(seed, shift=(3, 0), gain=1.06)
        res = _run(det, pz.image_a, pz.image_b)
        assert res.extras["align"] not in ("identity", "none"), seed  # the shift was registered
        scores.append(score_puzzle(pz, res.boxes_a, res.boxes_b))
    recall = np.mean([s["recall"] for s in scores])
    precision = np.mean([s["precision"] for s in scores])
    assert recall >= 0.9 and precision >= 0.9, (recall, precision)
    assert min(s["precision"] for s in scores) >= 0.7 and min(s["recall"] for s in scores) >= 0.5, scores
    assert sum(s["border_boxes"] for s in scores) == 0


def test_registration_leftovers_are_in_the_diagnostics():
    pz = make_puzzle(101, shift=(3, 0), gain=1.06)
    res = _run(SsimDetector(), pz.image_a, pz.image_b)
    ex = res.extras
    assert ex["residual_px"] < pixelwise.RESIDUAL_OK_PX and ex["tolerance_px"] == 1
    assert ex["uncovered_fraction"] == pytest.approx(3 / 512, abs=0.002)  # a 3 px strip of 512
    aligned = _run(SsimDetector(), pz.image_a, pz.image_a.copy()).extras
    assert aligned["tolerance_px"] == 0 and aligned["uncovered_fraction"] == 0 and aligned["residual_px"] == 0


def test_registration_off_by_more_than_a_pixel_says_so_and_tolerates_it(monkeypatch):
    """A homography 1.2 px off (x) and 0.6 px (y): the residual says so, the 2 px tolerance keeps
    the edges' halos out of the boxes (without it, precision 0.42 on seeds 0-19)."""
    def off_by_a_pixel(a, b):
        H = np.eye(3)
        H[0, 2], H[1, 2] = 3.0 + 1.2, 0.6
        return H, "orb", []

    monkeypatch.setattr(pixelwise, "auto_homography", off_by_a_pixel)
    det = SsimDetector()
    scores, residuals = [], []
    for seed in HELD_OUT:
        pz = make_puzzle(seed, shift=(3, 0), gain=1.06)
        res = det.run(pz.image_a, pz.image_b)
        residuals.append(res.extras["residual_px"])
        assert res.extras["tolerance_px"] == SsimParams().match_tolerance == 2
        scores.append(score_puzzle(pz, res.boxes_a, res.boxes_b))
    assert 1.0 < np.median(residuals) < 2.0  # the true error is 1.34 px
    assert np.mean([s["recall"] for s in scores]) >= 0.85
    assert np.mean([s["precision"] for s in scores]) >= 0.6


def _beside(kind_a: str, kind_b: str, gap: float, flipped: bool = False):
    """A: a `kind_a` object alone; B: it moved right, and a `kind_b` object added `gap` px to its right."""
    rng = np.random.default_rng(7)
    bg = background(480, 360, rng)
    first = Thing(kind_a, 120, 150, 34, (220, 50, 40), (240, 200, 40), flipped)
    moved = Thing(kind_a, 230, 150, 34, (220, 50, 40), (240, 200, 40), flipped)
    mb = moved.box()
    added = Thing(kind_b, 0, 150, 22, (50, 110, 210), (240, 240, 235))
    added.cx = mb[2] + gap + (added.cx - added.box()[0])
    a, b = bg.copy(), bg.copy()
    draw(a, first)
    draw(b, moved)
    draw(b, added)
    return a, b, [first.box(), mb, added.box()]


@pytest.mark.parametrize("kind_a, kind_b", [("house", "ball"), ("tree", "flower"), ("fish", "flag")])
@pytest.mark.parametrize("gap", [8, 12])  # closer, the SSIM windows of the two touch: one fragment
def test_a_moved_object_and_one_added_beside_it_are_two_boxes(kind_a, kind_b, gap):
    a, b, (old, new, added) = _beside(kind_a, kind_b, gap)
    res = _run(SsimDetector(), a, b)
    boxes = res.boxes_b
    assert len(boxes) == 3, boxes
    for truth in (old, new, added):
        assert iou_one_to_many(truth, boxes).max() >= 0.5, (truth, boxes)


@pytest.mark.parametrize("kind", ["fish", "house", "cloud", "tree"])
def test_a_mirrored_object_is_one_box(kind):
    """Its changed ends are fragments apart; they lie on one object of A (and of B): one box. (An
    object drawn across a line that spans the frame, the horizon, is not linked that way.)"""
    rng = np.random.default_rng(3)
    bg = background(480, 360, rng)
    thing = Thing(kind, 240, 80 if kind == "cloud" else 300, 34, (220, 50, 40), (240, 200, 40))
    a, b = bg.copy(), bg.copy()
    draw(a, thing)
    thing.flipped = True
    draw(b, thing)
    ys, xs = np.nonzero(np.any(a != b, axis=2))
    truth = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    res = _run(SsimDetector(), a, b)
    assert len(res.boxes_a) == 1 and iou_one_to_many(truth, res.boxes_a)[0] >= 0.5, res.boxes_a


def _small_difference_cases():
    for font, scale in ((cv2.FONT_HERSHEY_SIMPLEX, 0.5), (cv2.FONT_HERSHEY_DUPLEX, 0.6),
                        (cv2.FONT_HERSHEY_PLAIN, 1.2)):
        a = np.full((240, 420, 3), 245, np.uint8)
        b = a.copy()
        for img, total in ((a, "Total: 1,250.00"), (b, "Total: 1,750.00")):
            for i, t in enumerate([total, "Order 48213", "Ships in 3 days"]):
                cv2.putText(img, t, (20, 50 + 50 * i), font, scale, (30, 30, 30), 1, cv2.LINE_AA)
        yield a, b
    rng = np.random.default_rng(0)
    tile = np.full((256, 256, 3), (236, 232, 224), np.uint8)
    for _ in range(12):
        p1, p2 = rng.integers(0, 256, 2), rng.integers(0, 256, 2)
        cv2.line(tile, tuple(map(int, p1)), tuple(map(int, p2)), (255, 255, 255), 3, cv2.LINE_AA)
    icon = tile.copy()
    cv2.circle(icon, (150, 90), 4, (220, 60, 60), -1, cv2.LINE_AA)
    yield tile, icon
    road = tile.copy()
    cv2.line(road, (40, 200), (62, 188), (250, 200, 120), 2, cv2.LINE_AA)
    yield tile, road
    bar = np.full((64, 400, 3), 250, np.uint8)
    for k in range(8):
        cv2.circle(bar, (24 + 48 * k, 32), 9, (90, 90, 90), 2, cv2.LINE_AA)
    recoloured = bar.copy()
    cv2.circle(recoloured, (24 + 48 * 3, 32), 9, (40, 120, 220), 2, cv2.LINE_AA)
    yield bar, recoloured


@pytest.mark.parametrize("shifted", [False, True])
def test_small_differences_are_covered_with_their_fringe(shifted):
    """A few dozen changed pixels of a glyph or an icon: the boxes cover ≥ 90 % of what a per-pixel
    diff tool marks as changed (anti-aliased fringe included), also through a 3 px shift + 6 %."""
    det = SsimDetector()
    for i, (a, b) in enumerate(_small_difference_cases()):
        changed = changed_pixels(a, b)
        assert 20 <= changed.sum() <= 400
        if shifted:
            m = np.float32([[1, 0, -3], [0, 1, 0]])
            b = cv2.warpAffine(b, m, (b.shape[1], b.shape[0]), borderMode=cv2.BORDER_REFLECT)
            b = np.clip(b.astype(np.float32) * 1.06 + 0.5, 0, 255).astype(np.uint8)
        res = _run(det, a, b)
        assert len(res.boxes_a) == 1, (i, res.boxes_a)
        assert covered_fraction(changed, res.boxes_a) >= 0.9, i
