"""The pixel-wise detector computes its colour term on a helper thread beside the SSIM map
(`spotdiff.methods.difference._PARALLEL`): the same bytes as one thread, safe with concurrent callers
and after a fork."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from helpers.images import astronaut_pair
from spotdiff.methods import difference
from spotdiff.methods.pixelwise import SsimDetector
from spotdiff.params import SsimParams


def _pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    # 1024²: above ssim.map_side (512), where the map is computed on the 2-px grid (the threaded path)
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


@pytest.fixture
def serial_results(monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(difference, "_PARALLEL", False)
        det = SsimDetector(SsimParams())
        return [_run(det, a, b) for a, b in _pairs()]


def test_helper_thread_gives_the_same_bytes_as_one_thread(serial_results):
    assert difference._PARALLEL  # the default
    det = SsimDetector(SsimParams())
    for (a, b), want in zip(_pairs(), serial_results):
        assert _same(_run(det, a, b), want)
    assert any(len(t[0][0]) for t in serial_results)  # boxes were found, so the comparison means something
    assert difference._POOL is not None  # and the helper thread did the colour term


def test_concurrent_callers_each_get_their_own_result(serial_results):
    det = SsimDetector(SsimParams())
    jobs = _pairs() * 3
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda ab: _run(det, *ab), jobs))
    for i, result in enumerate(got):
        assert _same(result, serial_results[i % len(serial_results)]), f"call {i}"


def test_a_forked_child_starts_its_own_helper_thread():
    a, b = _pairs()[2]
    want = len(SsimDetector(SsimParams()).detect(a, b)[0])
    assert difference._POOL is not None  # the parent's helper thread exists before the fork
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: detect, report, and leave without the exit handlers it inherited
        code = 1
        try:
            os.close(read_end)
            os.write(write_end, str(len(SsimDetector(SsimParams()).detect(a, b)[0])).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
        pytest.fail("the forked child hung on the parent's helper thread")
    with os.fdopen(read_end, "rb") as pipe:
        got = pipe.read().decode()
    assert os.waitstatus_to_exitcode(done[1]) == 0 and got == str(want), (done, got)
