"""Shared by the input/CLI/params/output half of the fault suite: the promise each case checks, and a
runner for cases that need their own process (a memory limit, a file-size limit)."""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
from pathlib import Path

from helpers.env import subprocess_env

DRIVER = Path(__file__).with_name("driver.py")
MEMORY_LIMIT = 3 << 30  # RLIMIT_DATA of the child: a regression fails instead of swapping the machine


_PROGRESS = re.compile(r"\d+%\|.*\| *\d+/\d+")  # a tqdm bar: "desc:  40%|####  | 2/5 [..]"


def assert_user_error(rc, out: str, err: str, leftovers: Path | None = None, code: int = 2) -> str:
    """The promise: exit `code`, exactly one stderr line starting `spotdiff: error:`, no traceback,
    and (when given) nothing at `leftovers` (the output location does not exist, or is empty).
    Progress bars a stage drew before it failed are not error lines and are left out."""
    lines = [ln for ln in err.splitlines() if ln.strip() and not _PROGRESS.search(ln)]
    assert rc == code, f"exit {rc}, expected {code}; stderr: {err[-2000:]}"
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}: {err[-2000:]}"
    assert lines[0].startswith("spotdiff: error: "), lines[0]
    assert "Traceback" not in out + err
    if leftovers is not None:
        assert not leftovers.exists() or not any(leftovers.iterdir()), \
            f"left behind: {sorted(p.name for p in leftovers.iterdir())}"
    return lines[0]


def _limits(fsize: int | None = None):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, MEMORY_LIMIT))
        if fsize:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return apply


def run_cases(cases: list[dict], workdir: Path, timeout: float = 300) -> list[dict]:
    """Run each {"argv", "cwd", "fsize"} through `spotdiff.cli.main` in one child process under
    MEMORY_LIMIT (driver.py); returns one {"rc", "stdout", "stderr", "raised", "peak_rss_mb"} each."""
    cases_file, results_file = workdir / "cases.json", workdir / "results.json"
    cases_file.write_text(json.dumps([{**c, "argv": [str(a) for a in c["argv"]], "cwd": str(c["cwd"])}
                                      for c in cases]))
    proc = subprocess.run([sys.executable, str(DRIVER), str(cases_file), str(results_file)],
                          env=subprocess_env(), capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_limits())
    assert proc.returncode == 0 and results_file.exists(), \
        f"driver died (exit {proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(results_file.read_text())
