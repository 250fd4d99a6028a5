"""Run every benchmarks/bench_*.py in turn (what `make bench` does) and end with a summary.

Each script prints its own table and writes its JSON under benchmarks/results/. A script that fails
(a crash, or a result that is wrong: different boxes, a different AP, an output not reproduced) does
not stop the others; the summary lists each script's exit code, wall time and the lines where it
states its goal, and the run exits 1 when any script failed. A speed goal that is missed is printed
("NOT met") but is not a failure: the figure is still the measurement.

    .venv/bin/python benchmarks/run_all.py [--only ssim ap ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME",
                        help="run only these (bench_NAME.py), e.g. --only ssim ap")
    parser.add_argument("--dir", type=Path, default=HERE, help=argparse.SUPPRESS)  # the tests' own scripts
    args = parser.parse_args()
    scripts = sorted(args.dir.glob("bench_*.py"))
    if args.only:
        known = {p.stem.removeprefix("bench_"): p for p in scripts}
        unknown = [n for n in args.only if n not in known]
        if unknown:
            print(f"run_all: no benchmark named {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
            return 2
        scripts = [known[n] for n in args.only]
    summary = []
    for script in scripts:
        print(f"== {script.parent.name}/{script.name}", flush=True)
        t0 = time.perf_counter()
        goals: list[str] = []
        with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, bufsize=1) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                if "goal" in line.lower() and not line.lstrip().startswith(("run ", "W")):
                    goals.append(line.strip())
        summary.append((script.stem, proc.returncode, time.perf_counter() - t0, goals))
    print("\n== summary")
    print(f"{'benchmark':<24}{'exit':>5}{'wall s':>9}  goal lines")
    for name, code, seconds, goals in summary:
        first, *rest = goals or ["-"]
        print(f"{name:<24}{code:>5}{seconds:>9.0f}  {first[:110]}")
        for line in rest:
            print(f"{'':<38}  {line[:110]}")
    failed = [name for name, code, _, _ in summary if code != 0]
    print(f"failed: {', '.join(failed)}" if failed else "every benchmark ran to the end")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
