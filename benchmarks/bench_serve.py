"""Benchmark: `spotdiff serve` under 50 concurrent `POST /v1/detect` on loopback — latency and memory.

A real server process (`spotdiff serve --workers W`) on 127.0.0.1; after a warm-up, N clients post at
once, `rounds` times over; per request the wall time seen by the client (queueing included). Each
method is measured in its own run: ssim on the astronaut pair (512² PNGs, the cat pasted in), and
cyws with models/cyws.pt (before `dvc repro` has made it: params.yaml's model, untrained weights). Reports p50/p90/p99/max
latency, requests per second, and the server's RSS after warm-up and after each round (the pool
bounds the work in flight, so memory should stay flat). Writes benchmarks/results/serve.json.

    .venv/bin/python benchmarks/bench_serve.py [--clients 50] [--rounds 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _timing import machine, machine_line  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "serve.json"
sys.path.insert(0, str(ROOT / "tests"))  # the tests' server and image helpers: one way to start and post

from helpers.images import astronaut_pair  # noqa: E402
from helpers.serve import png_bytes, post_detect, running_server  # noqa: E402


def measure(method: str, server_args: list[str], clients: int, rounds: int, workdir: Path) -> dict:
    import psutil

    a, b = astronaut_pair()
    files = {"image_a": ("astronaut.png", png_bytes(a)), "image_b": ("astronaut_cat.png", png_bytes(b))}
    with running_server(server_args, workdir) as server:
        proc = psutil.Process(server.process.pid)
        for _ in range(3):
            status, body = post_detect(server.url, files, method=method)
            assert status == 200, body
        rss = [proc.memory_info().rss / 2**20]
        latencies, statuses, compute = [], [], []
        t_all = time.perf_counter()

        def one(_i: int) -> tuple[int, float, float]:
            t0 = time.perf_counter()
            status, body = post_detect(server.url, files, timeout=600, method=method)
            return status, time.perf_counter() - t0, body.get("timings", {}).get("total_s", float("nan"))

        for _r in range(rounds):
            with ThreadPoolExecutor(clients) as ex:
                got = list(ex.map(one, range(clients)))
            statuses += [s for s, _, _ in got]
            latencies += [t for _, t, _ in got]
            compute += [c for _, _, c in got]
            rss.append(proc.memory_info().rss / 2**20)
        wall = time.perf_counter() - t_all
    lat = np.array(latencies) * 1000
    return {"method": method, "clients": clients, "rounds": rounds, "requests": len(lat),
            "failures": int(sum(s != 200 for s in statuses)),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p90_ms": round(float(np.percentile(lat, 90)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1), "max_ms": round(float(lat.max()), 1),
            "requests_per_s": round(len(lat) / wall, 2),
            # the server's own decode + detect time per request (report timings.total_s): latency minus queueing
            "compute_p50_ms": round(float(np.nanpercentile(np.array(compute) * 1000, 50)), 1),
            "rss_mb_warm_then_per_round": [round(x, 1) for x in rss]}


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    info = machine()
    print(machine_line(info))
    base = ["--workers", str(args.workers), "--queue", str(args.clients + 8)]
    runs, notes = [], []
    model = ROOT / "models" / "cyws.pt"
    plan = [("ssim", base)]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        if not model.is_file():
            # Before `dvc repro` has trained one: the same architecture (params.yaml's model section)
            # with untrained weights. The time per request does not depend on the weights.
            from spotdiff.models.checkpoint import save_model
            from spotdiff.models.cyws import CYWS
            from spotdiff.params import load_params

            model = Path(tmp) / "untrained-cyws.pt"
            save_model(CYWS.from_params(load_params(ROOT / "params.yaml").model), model)
            notes.append("cyws: models/cyws.pt does not exist yet (`dvc repro` trains it); measured with "
                         "params.yaml's model and untrained weights (same architecture, same work per request)")
        plan.append(("cyws", [*base, "--model", str(model)]))
        for method, server_args in plan:
            row = measure(method, server_args, args.clients, args.rounds, Path(tmp))
            runs.append(row)
            print(f"{method:5s} {row['requests']} requests ({row['clients']} at once × {row['rounds']}), "
                  f"{args.workers} workers: "
                  f"p50 {row['p50_ms']} ms, p90 {row['p90_ms']} ms, p99 {row['p99_ms']} ms, "
                  f"{row['requests_per_s']} req/s (compute p50 {row['compute_p50_ms']} ms), "
                  f"failures {row['failures']}, "
                  f"server RSS MB {row['rss_mb_warm_then_per_round']}")
    for n in notes:
        print(n)
    from spotdiff.fsutil import write_json_atomic

    write_json_atomic(RESULTS, {"benchmark": "serve_concurrent_detect", "workers": args.workers,
                                "image": "astronaut 512x512 PNG pair", "runs": runs, "notes": notes,
                                "machine": info})
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
