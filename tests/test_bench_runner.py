"""`make bench`'s runner (benchmarks/run_all.py): one benchmark that fails does not hide the others."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RUNNER = Path(__file__).resolve().parents[1] / "benchmarks" / "run_all.py"


def test_a_failing_benchmark_does_not_stop_the_others(tmp_path):
    (tmp_path / "bench_a_fails.py").write_text(
        "print('table of a')\nprint('goal (>= 10x): NOT met')\nraise SystemExit(1)\n")
    (tmp_path / "bench_b_runs.py").write_text("print('table of b')\nprint('Goal >= 2x: met')\n")
    proc = subprocess.run([sys.executable, str(RUNNER), "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "table of a" in out and "table of b" in out  # b ran after a failed
    summary = out.split("== summary", 1)[1]
    rows = {line.split()[0]: line.split()[1] for line in summary.splitlines()[2:] if line.startswith("bench_")}
    assert rows == {"bench_a_fails": "1", "bench_b_runs": "0"}
    assert "goal (>= 10x): NOT met" in summary and "Goal >= 2x: met" in summary
    assert "failed: bench_a_fails" in summary


def test_every_benchmark_passing_exits_zero_and_only_picks(tmp_path):
    (tmp_path / "bench_one.py").write_text("print('one')\n")
    (tmp_path / "bench_two.py").write_text("raise SystemExit(3)\n")
    proc = subprocess.run([sys.executable, str(RUNNER), "--dir", str(tmp_path), "--only", "one"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every benchmark ran to the end" in proc.stdout and "bench_two" not in proc.stdout
    bad = subprocess.run([sys.executable, str(RUNNER), "--dir", str(tmp_path), "--only", "three"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no benchmark named three" in bad.stderr
