"""Shared test set-up: offline, quiet telemetry, and paths to the repository."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
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
# Exported ONNX graphs of the tests' throw-away models go to a temp folder, not ~/.cache/spotdiff.
if "SPOTDIFF_CACHE_DIR" not in os.environ:
    os.environ["SPOTDIFF_CACHE_DIR"] = tempfile.mkdtemp(prefix="spotdiff-test-cache-")
    atexit.register(shutil.rmtree, os.environ["SPOTDIFF_CACHE_DIR"], True)


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def spotdiff_bin() -> str:
    return str(VENV_BIN / "spotdiff")
