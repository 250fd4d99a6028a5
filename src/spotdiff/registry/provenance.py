"""Where a registered model comes from: its metrics, the git revision and the model's DVC md5."""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Optional

import yaml

from spotdiff.errors import SpotdiffError
from spotdiff.fsutil import file_digest


def read_json(path: str | Path, what: str, rerun: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise SpotdiffError(f"{path}: {what} not found; {rerun}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpotdiffError(f"{path}: not valid JSON ({exc}); {rerun}") from None


def git_revision(root: Path) -> dict[str, Any]:
    """{"commit": sha or None, "dirty": bool or None} for the repo at `root`.

    Without git (e.g. the Docker image, built with no .git) env SPOTDIFF_GIT_COMMIT is used if set.
    """
    fallback = {"commit": os.environ.get("SPOTDIFF_GIT_COMMIT") or None, "dirty": None}
    if fallback["commit"] == "unknown":
        fallback["commit"] = None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=20)
        if sha.returncode != 0:
            return fallback
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=20)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return {"commit": sha.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return fallback



def model_md5(root: Path, model_path: Path) -> dict[str, Optional[str]]:
    """The model's md5 as recorded in dvc.lock (the stage output that produced it), else of the file.

    Returns {"md5", "source": "dvc.lock" | "file", "stage": stage name or None}.
    """
    try:
        rel = model_path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        rel = None
    lock = root / "dvc.lock"
    if rel is not None and lock.is_file():
        try:
            data = yaml.safe_load(lock.read_text()) or {}
        except yaml.YAMLError:
            data = {}
        for stage, info in (data.get("stages") or {}).items():
            for out in (info or {}).get("outs") or []:
                if isinstance(out, dict) and out.get("path") == rel and out.get("md5"):
                    return {"md5": out["md5"], "source": "dvc.lock", "stage": stage}
    return {"md5": file_digest(model_path), "source": "file", "stage": None}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
