"""Benchmark: the team stack started natively (what deploy/compose.yaml runs in containers) and one
client's round trip through it.

Starts PostgreSQL (Debian's package, temp folder), moto's S3 server, `mlflow server` on PostgreSQL with
artifacts proxied to S3, and `prefect server start` on PostgreSQL, each on 127.0.0.1, timing each
until healthy; then through the tracking server: create an experiment and a run, log 100 metrics in
one batch, upload and download a 10 MiB artifact (checked byte-identical), register a model version
and set an alias; and the registry's promotion lock (PostgreSQL advisory lock: connect, lock, unlock).
Medians of `--rounds` rounds for the client steps. Writes benchmarks/results/team_stack.json.
No goal: the figures go to deploy/README.md.

    .venv/bin/python benchmarks/bench_team_stack.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/ is on sys.path when run as a script; the services come from the tests' helpers
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _timing import machine, machine_line  # noqa: E402

from helpers import team  # noqa: E402
from spotdiff.fsutil import write_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "team_stack.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    for key, value in {"MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1"}.items():
        os.environ.setdefault(key, value)
    load_before = os.getloadavg()[0]
    folder = Path(tempfile.mkdtemp(prefix="spotdiff-team-bench-"))
    starts: dict[str, float] = {}
    steps: dict[str, list[float]] = {}
    t0 = time.monotonic()
    with team.postgres() as pg, team.s3_server("spotdiff-team") as s3, \
            team.mlflow_server(pg.url, s3, folder) as mlflow_srv, \
            team.prefect_server(pg.url, folder) as prefect:
        stack_s = time.monotonic() - t0
        starts = {"postgresql": pg.start_s, "postgresql_initdb": pg.extra["initdb_s"], "s3": s3.start_s,
                  "mlflow_server": mlflow_srv.start_s, "prefect_server": prefect.start_s}
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        from spotdiff.registry.concurrency import promotion_lock

        client = MlflowClient(tracking_uri=mlflow_srv.url, registry_uri=mlflow_srv.url)
        payload = os.urandom(10 * 1024 * 1024)
        src = folder / "weights.bin"
        src.write_bytes(payload)
        client.create_registered_model("bench")

        def timed(name: str, fn):
            t = time.perf_counter()
            result = fn()
            steps.setdefault(name, []).append(time.perf_counter() - t)
            return result

        for r in range(args.rounds):
            exp_id = timed("create_experiment", lambda: client.create_experiment(f"bench-{r}"))
            run_id = timed("create_run", lambda: client.create_run(exp_id).info.run_id)
            now = int(time.time() * 1000)
            timed("log_batch_100_metrics", lambda: client.log_batch(
                run_id, metrics=[Metric("loss", 1.0 / (i + 1), now, i) for i in range(100)]))
            timed("upload_10MiB", lambda: client.log_artifact(run_id, str(src), "model"))
            dest = folder / f"back-{r}"
            dest.mkdir()
            got = timed("download_10MiB", lambda: client.download_artifacts(run_id, "model/weights.bin",
                                                                            str(dest)))
            assert Path(got).read_bytes() == payload
            mv = timed("create_model_version", lambda: client.create_model_version(
                "bench", f"runs:/{run_id}/model", run_id=run_id))
            timed("set_alias", lambda: client.set_registered_model_alias("bench", "champion", mv.version))

            def lock_cycle():
                with promotion_lock(f"{pg.url}/mlflow", "bench"):
                    pass

            timed("promotion_lock_cycle", lock_cycle)
    medians = {k: round(statistics.median(v), 4) for k, v in steps.items()}
    info = machine()
    result = {"machine": info, "load_avg_1min_before": round(load_before, 2),
              "load_avg_1min_after": round(os.getloadavg()[0], 2), "rounds": args.rounds,
              "service_start_s": starts, "stack_start_s": round(stack_s, 2), "client_median_s": medians}
    write_json_atomic(RESULTS, result)
    print(machine_line(info))
    print(f"load average (1 min): {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print("| service | start until healthy (s) |\n|---|---:|")
    for k, v in starts.items():
        print(f"| {k} | {v:.2f} |")
    print(f"| whole stack (sequential) | {stack_s:.2f} |")
    print(f"\n| client step (median of {args.rounds}) | seconds |\n|---|---:|")
    for k, v in medians.items():
        print(f"| {k} | {v:.3f} |")
    print(f"-> {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
