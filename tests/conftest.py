"""Shared test set-up: offline, quiet telemetry, and paths to the repository."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

for key, value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(key, value)


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def spotdiff_bin() -> str:
    return str(VENV_BIN / "spotdiff")
