"""The repository's paths, the telemetry-off environment, and environments for subprocesses."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SPOTDIFF = VENV_BIN / "spotdiff"  # the installed console script

# MLflow, Prefect and DVC phone home unless told not to; the tests never do.
TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
}


def subprocess_env(*, drop: tuple[str, ...] = (), venv_on_path: bool = False, **extra: str) -> dict[str, str]:
    """This process's environment for a child: minus `drop`, telemetry off, plus `extra`; with
    `venv_on_path` the venv's bin folder first on PATH (so `spotdiff`, `dvc`, `mlflow` are found the way
    DVC stages and servers look them up)."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(TELEMETRY_OFF)
    if venv_on_path:
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env
