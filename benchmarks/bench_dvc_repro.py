"""Benchmark: `dvc repro` of the embedded default from a fresh clone, then a no-op `dvc repro`.

Clones this repository's committed HEAD (`git clone`, so uncommitted changes are not in it) into a
temp folder, reuses this checkout's `.venv` (its bin/ first on PATH, the clone's src/ first on
PYTHONPATH so the clone's own code runs — nothing is reinstalled), and times in one run:
  1. `dvc repro` there (every stage: no DVC cache in a fresh clone), with each stage's share taken
     from the time its "Running stage" line appeared;
  2. `dvc repro` again, which must find everything up to date (the no-op);
and compares every output's md5 with the committed dvc.lock (is the model reproduced bit for bit?).
Goals: the first ≤ 10 min on 2 cores, the no-op ≤ 5 s. Writes benchmarks/results/dvc_repro.json.

    .venv/bin/python benchmarks/bench_dvc_repro.py [--dry] [--set train.max_steps=5 ...] [--keep]

`--dry` only clones, checks that the clone's own code is what runs, and runs `dvc status` and
`dvc dag` (seconds: checks the set-up without the pipeline's CPU time; nothing written under results/). `--set KEY=VALUE` overrides a
params.yaml key in the clone (a smaller run; reported with the figures).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _timing import machine, machine_line  # benchmarks/ is on sys.path when run as a script

from spotdiff.fsutil import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "dvc_repro.json"
GOAL_FULL_S, GOAL_NOOP_S = 600.0, 5.0


def clone_env(clone: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{clone / 'src'}{os.pathsep}{env.get('PYTHONPATH', '')}".rstrip(os.pathsep)
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1"})
    env.pop("MLFLOW_TRACKING_URI", None)  # the clone's own store, as `make run` uses
    return env


def timed_run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int, list[tuple[float, str]], str]:
    """Run `cmd`, streaming its output; (seconds, exit code, [(t, stage) for each stage start], tail)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stages, lines = [], []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip())
        m = re.match(r"Running stage '([^']+)'", line.strip())
        if m:
            stages.append((time.perf_counter() - t0, m.group(1)))
    code = proc.wait()
    return time.perf_counter() - t0, code, stages, "\n".join(lines[-15:])


def set_params(params_file: Path, overrides: list[str]) -> None:
    data = yaml.safe_load(params_file.read_text())
    for item in overrides:
        key, _, value = item.partition("=")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = yaml.safe_load(value)
    params_file.write_text(yaml.safe_dump(data, sort_keys=False))


def lock_outputs(text: str) -> dict[str, str]:
    """`{path: md5}` of every stage output in a dvc.lock."""
    lock = yaml.safe_load(text) or {}
    return {out["path"]: out.get("md5", "") for stage in (lock.get("stages") or {}).values()
            for out in stage.get("outs", [])}


def compare_outputs(clone: Path) -> dict[str, bool]:
    """For each output of the committed dvc.lock: does the fresh repro's dvc.lock give it the same md5?

    (registry/registration.json and the MLflow-side files differ by design: version numbers, run ids.)
    """
    committed = subprocess.run(["git", "show", "HEAD:dvc.lock"], cwd=clone, capture_output=True, text=True)
    if committed.returncode != 0:
        return {}
    before = lock_outputs(committed.stdout)
    after = lock_outputs((clone / "dvc.lock").read_text())
    return {path: after.get(path) == md5 for path, md5 in before.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="clone + set-up checks + `dvc status` only")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    args = parser.parse_args()
    info = machine()
    dvc = str(Path(sys.executable).parent / "dvc")

    tmp = Path(tempfile.mkdtemp(prefix="spotdiff-bench-clone-"))
    clone = tmp / "spotdiff"
    try:
        t0 = time.perf_counter()
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        clone_s = time.perf_counter() - t0
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                              text=True, check=True).stdout.strip()
        if args.overrides:
            set_params(clone / "params.yaml", args.overrides)
        env = clone_env(clone)
        if args.dry:
            where = subprocess.run([sys.executable, "-c", "import spotdiff; print(spotdiff.__file__)"], cwd=clone,
                                   env=env, capture_output=True, text=True, check=True).stdout.strip()
            status_s, status_code, _, status_tail = timed_run([dvc, "status"], clone, env)
            dag_s, dag_code, _, dag_tail = timed_run([dvc, "dag"], clone, env)
            own_code = where.startswith(str(clone))
            print(f"clone of {head} in {clone_s:.1f} s; spotdiff imported from {where} "
                  f"({'the clone' if own_code else 'NOT the clone'}); `dvc status` {status_s:.1f} s "
                  f"(exit {status_code}); `dvc dag` {dag_s:.1f} s (exit {dag_code})")
            print(status_tail)
            return 0 if own_code and status_code == 0 and dag_code == 0 else 1

        full_s, code, stages, tail = timed_run([dvc, "repro"], clone, env)
        if code != 0:
            print(tail)
            print(f"dvc repro failed (exit {code}) after {full_s:.0f} s")
            return 1
        same = compare_outputs(clone)
        noop_s, noop_code, noop_stages, noop_tail = timed_run([dvc, "repro"], clone, env)
        marks = stages + [(full_s, "")]
        per_stage = {name: round(marks[i + 1][0] - t, 1) for i, (t, name) in enumerate(stages)}
        rows = [{"what": "dvc repro, fresh clone (all stages)", "seconds": full_s, "goal_s": GOAL_FULL_S,
                 "per_stage_s": per_stage},
                {"what": "dvc repro, no-op", "seconds": noop_s, "goal_s": GOAL_NOOP_S,
                 "stages_run": [s for _, s in noop_stages], "exit_code": noop_code}]
        print(f"dvc repro of {head} (embedded default{' with ' + ', '.join(args.overrides) if args.overrides else ''})")
        print(f"{'run':<40}{'seconds':>9}{'goal':>9}")
        for r in rows:
            print(f"{r['what']:<40}{r['seconds']:>9.1f}{'≤ ' + str(int(r['goal_s'])):>9}")
        print("stages: " + ", ".join(f"{k} {v:.0f} s" for k, v in per_stage.items()))
        if noop_stages:
            print(f"note: the second repro ran {[s for _, s in noop_stages]}: not a no-op\n{noop_tail}")
        model = same.get("models/cyws.pt")
        print(f"outputs with the committed dvc.lock's md5: {sum(same.values())}/{len(same)}; models/cyws.pt "
              f"{'the same bytes (reproduced bit for bit)' if model else 'DIFFERENT from the committed model'}"
              if model is not None else "models/cyws.pt: not in the committed dvc.lock")
        print(machine_line(info))
        print("goal (fresh clone ≤ {:.0f} s, no-op ≤ {:.0f} s): {}".format(
            GOAL_FULL_S, GOAL_NOOP_S, "met" if full_s <= GOAL_FULL_S and noop_s <= GOAL_NOOP_S else "NOT met"))
        write_json_atomic(RESULTS, {"benchmark": "dvc_repro_fresh_clone_and_noop", "commit": head,
                                    "overrides": args.overrides, "clone_s": clone_s, "rows": rows,
                                    "same_md5_as_committed_lock": same,
                                    "machine": info, "command": "python benchmarks/bench_dvc_repro.py"
                                    + "".join(f" --set {o}" for o in args.overrides)})
        print(f"wrote {RESULTS}")
        return 0 if not noop_stages else 1
    finally:
        if args.keep:
            print(f"clone kept at {clone}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
