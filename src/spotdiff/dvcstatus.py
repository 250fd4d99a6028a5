"""Which pipeline stages are stale: `dvc status --json`, read by one rule.

A stage is stale when `dvc.lock` no longer matches the params or code it records. Outputs that are
merely absent (a fresh clone without the DVC cache: "deleted", "not in cache") are not changes.
CI's retraining rule (`spotdiff lock-status`) and the Prefect flow's report both ask here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Optional

from spotdiff.errors import SpotdiffError

ABSENT = {"deleted", "not in cache"}


def stale_stages(status: dict) -> dict[str, list[str]]:
    """From `dvc status --json`: stage -> the changes that are real (not just missing outputs)."""
    stale: dict[str, list[str]] = {}
    for stage, entries in status.items():
        reasons = []
        for entry in entries if isinstance(entries, list) else [entries]:
            if isinstance(entry, str):  # e.g. "changed command", "always changed"
                reasons.append(entry)
                continue
            for kind, changes in entry.items():
                if not isinstance(changes, dict):
                    reasons.append(kind)
                    continue
                for path, change in changes.items():
                    if isinstance(change, dict):  # params.yaml: {key: "modified"}
                        reasons += [f"{path}:{key} {value}" for key, value in change.items()]
                    elif change not in ABSENT:
                        reasons.append(f"{path} {change}")
        if reasons:
            stale[stage] = reasons
    return stale


def dvc_status(repo: str | Path = ".", env: Optional[Mapping[str, str]] = None) -> dict:
    """`dvc status --json` in `repo`, run by this interpreter's DVC; a one-line error when it fails."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=repo, capture_output=True,
                          text=True, env=None if env is None else dict(env))
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or ["no message"]
        raise SpotdiffError(f"{repo}: `dvc status` failed ({last[0]}); run it there to see why")
    try:
        return json.loads(proc.stdout or "{}")
    except json.JSONDecodeError:
        raise SpotdiffError(f"{repo}: `dvc status --json` printed no JSON; run it there to see why") from None
