"""The pixel-wise detector is safe with concurrent callers (`spotdiff serve`'s workers share one
detector): each thread has its own scratch arrays (`ssim_map.Scratch`), so every call gets the result a
lone call gets, to the byte."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from helpers.images import astronaut_pair
from spotdiff.methods.pixelwise import SsimDetector
from spotdiff.params import SsimParams


def _pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    # 1024²: above ssim.map_side (512), where the map is computed on the 2-px grid into scratch arrays
    a, b = (cv2.resize(x, (1024, 1024), interpolation=cv2.INTER_LINEAR) for x in astronaut_pair())
    rng = np.random.default_rng(0)
    shaded = np.clip(b.astype(np.int16) * 1.1 + 8, 0, 255).astype(np.uint8)  # exposure: a colour fit
    boxed = b.copy()
    boxed[600:720, 80:240] = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    return [(a, b), (a, shaded), (a, boxed), (boxed, a)]


def _run(det: SsimDetector, a: np.ndarray, b: np.ndarray):
    out = det.run(a, b, keep_maps=True)
    return out.as_tuple(), out.extras["diff"]


def _same(x, y) -> bool:
    (tx, dx), (ty, dy) = x, y
    return all(np.array_equal(p, q) for p, q in zip(tx, ty)) and np.array_equal(dx, dy)


def test_concurrent_callers_each_get_their_own_result():
    det = SsimDetector(SsimParams())
    serial = [_run(det, a, b) for a, b in _pairs()]
    assert any(len(t[0][0]) for t in serial)  # boxes were found, so the comparison means something
    jobs = _pairs() * 3
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda ab: _run(det, *ab), jobs))
    for i, result in enumerate(got):
        assert _same(result, serial[i % len(serial)]), f"call {i}"
