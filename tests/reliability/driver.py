"""Run `spotdiff.cli.main` on many cases in one child process, each with its own stdout/stderr.

Usage: `python driver.py CASES.json RESULTS.json`. CASES.json: a list of {"argv": [...], "cwd": DIR,
"fsize": BYTES or null}. The parent starts this under a memory limit (RLIMIT_DATA) so a regression
fails the test instead of taking the machine down; `fsize` lowers the soft file-size limit for one
case (Python ignores SIGXFSZ, so an over-limit write is an OSError). File descriptors 1 and 2 are
redirected per case, so what native code (OpenCV, libpng) writes is captured too.
Results: one {"rc", "stdout", "stderr", "raised", "peak_rss_mb"} per case, in order.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import traceback


def run_case(case: dict) -> dict:
    from spotdiff.cli import main

    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_cwd = os.getcwd()
    rc, raised = None, None
    try:
        os.chdir(case["cwd"])
        if case.get("fsize"):
            resource.setrlimit(resource.RLIMIT_FSIZE, (int(case["fsize"]), hard))
        rc = main(case["argv"])
    except BaseException as exc:  # noqa: BLE001 - recorded: the test fails on it
        raised = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        os.chdir(old_cwd)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
    out.seek(0)
    err.seek(0)
    return {"rc": rc, "stdout": out.read().decode("utf-8", "replace"),
            "stderr": err.read().decode("utf-8", "replace"), "raised": raised,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    import torch

    torch.set_num_threads(1)
    cases = json.loads(open(sys.argv[1]).read())
    results = [run_case(c) for c in cases]
    with open(sys.argv[2], "w") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    main()
