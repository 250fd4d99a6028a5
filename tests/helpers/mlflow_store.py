"""Throw-away MLflow stores: the URI of a SQLite store in a folder, a repository folder whose default
store is used, a finished "training" run to log into, and putting mlflow's globals back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from helpers.env import TELEMETRY_OFF

STORE_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def sqlite_uri(folder: Path, name: str = "mlflow.db") -> str:
    """`sqlite:///<folder>/<name>`: a store of its own for one test."""
    return f"sqlite:///{Path(folder) / name}"


def reset_mlflow() -> None:
    """Forget the tracking URI a test set in-process, so no store leaks into the next test."""
    if "mlflow" in sys.modules:  # never import mlflow (slow) just to reset it
        sys.modules["mlflow"].set_tracking_uri(None)


def use_repo_store(mp: pytest.MonkeyPatch, root: Path) -> Path:
    """Make `root` the repository folder (cwd) with telemetry off and no MLflow URI in the environment,
    so `spotdiff.tracking` picks the project's default store under `root/mlruns/`. Undone with `mp`;
    call `reset_mlflow()` afterwards too."""
    for key, value in TELEMETRY_OFF.items():
        mp.setenv(key, value)
    for key in STORE_ENV:
        mp.delenv(key, raising=False)
    mp.chdir(root)
    return root


def start_training_run(params, root: Path | None = None, metric: tuple[str, float] = ("train/loss", 1.0),
                       run_name: str | None = None) -> str:
    """`setup_mlflow(params, root)`, then a finished run with one metric, as the train stage leaves one;
    returns its run id."""
    import mlflow

    from spotdiff.tracking import setup_mlflow

    setup_mlflow(params, root)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_metric(*metric)
    return run.info.run_id


def write_run_record(path: Path, run_id: str) -> Path:
    """The train stage's run record (`models/train_run.json`) naming `run_id`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"mlflow_run_id": run_id}))
    return path
