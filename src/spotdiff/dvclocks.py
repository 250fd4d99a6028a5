"""DVC's stage lock file after a kill: `dvc repro` rewrites `.dvc/tmp/rwlock` in place (truncate,
then write), so a `dvc` process killed in between leaves it empty and every later `dvc repro` stops
with "Unable to read RWLock-file … JSON structure is corrupted". `repair_rwlock` resets such a file,
and only when no DVC process holds the repository (DVC's own `.dvc/tmp/lock`, a flock)."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from spotdiff.errors import SpotdiffError


def repair_rwlock(repo: str | Path) -> str | None:
    """Reset a corrupted `<repo>/.dvc/tmp/rwlock` to an empty lock table (the old bytes kept beside
    it); returns what was done, or None when there was nothing to repair."""
    tmp = Path(repo) / ".dvc" / "tmp"
    rwlock = tmp / "rwlock"
    if not rwlock.is_file():
        return None
    try:
        json.loads(rwlock.read_text(encoding="utf-8"))
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    with open(tmp / "lock", "a") as fh:  # DVC's repository lock (zc.lockfile: flock)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SpotdiffError(f"{rwlock}: corrupted, but a dvc process holds this repository; "
                                "let it finish, then rerun") from None
        try:
            kept = rwlock.with_name(f"rwlock.corrupt-{int(time.time())}")
            os.replace(rwlock, kept)
            part = rwlock.with_name(f".rwlock.{os.getpid()}.tmp")
            part.write_text("{}", encoding="utf-8")
            os.replace(part, rwlock)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return f"{rwlock}: corrupted by a killed dvc process; reset (old bytes in {kept.name})"
