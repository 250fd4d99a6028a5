"""Timing helper shared by the benchmarks (run as scripts, so this folder is on sys.path)."""

from __future__ import annotations

import time


def best_of(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of `repeats` calls of `fn`, and the last call's result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out
