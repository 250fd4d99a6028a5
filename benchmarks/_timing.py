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


def interleaved_medians(fns: dict, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each callable, timed in interleaved rounds (A, B, C, A, B, C, ...).

    Interleaving spreads any background load (another job on the machine) evenly over the
    candidates, so their ratio stays fair even when the absolute figures move.
    """
    import statistics

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def interleaved_medians_wall_cpu(fns: dict, repeats: int, warmup: int = 1) -> dict[str, dict[str, float]]:
    """`interleaved_medians`, also timing each call's CPU time (`time.process_time`, all threads).

    On a machine shared with other jobs, a call's wall time includes the time it waited for a core;
    its CPU time does not (it still includes the cache misses that other jobs cause). For
    single-threaded code on an idle machine the two agree.
    """
    import statistics

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {name: {"wall": statistics.median(wall[name]), "cpu": statistics.median(cpu[name])}
            for name in fns}


def machine() -> dict:
    """What the figures were taken on: CPU model and its relevant flags (spotdiff.machine), cores,
    torch threads, load, GPU if any. Ratios from machines with different flags are never mixed."""
    import os
    import platform

    from spotdiff.machine import capabilities

    caps = capabilities()
    info: dict = {"python": platform.python_version(), "machine": platform.machine(),
                  "cpu_count": os.cpu_count(), "cpu": caps.cpu_model,
                  "cpu_flags": [f for f in caps.as_dict()["cpu_flags"]], "capabilities": caps.line()}
    try:
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["gpu"] = caps.cuda_device
    except ImportError:
        pass
    return info


def machine_line(info: dict) -> str:
    gpu = info.get("gpu") or "no GPU"
    flags = " ".join(info.get("cpu_flags") or []) or "no avx2/avx512"
    return (f"machine: {info.get('cpu')} | flags {flags} (torch kernels {info.get('torch_cpu_capability')}) | "
            f"{info.get('cpu_count')} cores | torch threads {info.get('torch_threads')} | "
            f"load avg {info.get('load_average_1m')} | {gpu}")
