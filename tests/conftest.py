"""Shared test set-up: offline and quiet telemetry for the whole run, and the fixtures several test
files use, by topic. Plain helper functions live in tests/helpers/ (`from helpers.<topic> import ...`)."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.env import REPO_ROOT, SPOTDIFF, TELEMETRY_OFF
from helpers.http import LocalServer, serve_folder
from helpers.mlflow_store import reset_mlflow, sqlite_uri, use_repo_store

for key, value in TELEMETRY_OFF.items():
    os.environ.setdefault(key, value)
# Exported ONNX graphs of the tests' throw-away models go to a temp folder, not ~/.cache/spotdiff.
if "SPOTDIFF_CACHE_DIR" not in os.environ:
    os.environ["SPOTDIFF_CACHE_DIR"] = tempfile.mkdtemp(prefix="spotdiff-test-cache-")
    atexit.register(shutil.rmtree, os.environ["SPOTDIFF_CACHE_DIR"], True)


# ---------------------------------------------------------------- the repository


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def spotdiff_bin() -> str:
    """The installed console script, for tests that need a real process and exit code."""
    return str(SPOTDIFF)


# ---------------------------------------------------------------- environment


@pytest.fixture
def telemetry_off(monkeypatch) -> None:
    """Telemetry off for this test even where the outer environment says otherwise (the module-level
    defaults above give way to a variable already set)."""
    for key, value in TELEMETRY_OFF.items():
        monkeypatch.setenv(key, value)


# ---------------------------------------------------------------- MLflow stores


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> Iterator[str]:
    """A throw-away SQLite store (`tmp_path/mlflow.db`) named by MLFLOW_TRACKING_URI, the way a user
    points every command at one store; yields its URI. mlflow's global URI is reset afterwards."""
    uri = sqlite_uri(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    reset_mlflow()


@pytest.fixture
def mlflow_repo(tmp_path, monkeypatch) -> Iterator[Path]:
    """`tmp_path` as the repository folder (cwd), telemetry off, no MLFLOW_TRACKING_URI or
    MLFLOW_REGISTRY_URI: MLflow uses the project's default store, `tmp_path/mlruns/mlflow.db`.
    mlflow's global URI is reset afterwards."""
    use_repo_store(monkeypatch, tmp_path)
    yield tmp_path
    reset_mlflow()


# ---------------------------------------------------------------- local HTTP servers


@pytest.fixture
def http_server(tmp_path) -> Iterator[LocalServer]:
    """`tmp_path/www` served on 127.0.0.1 (Range requests answered, every GET recorded)."""
    root = tmp_path / "www"
    root.mkdir()
    with serve_folder(root) as server:
        yield server


@pytest.fixture
def coco2017_server(http_server, tmp_path) -> LocalServer:
    """The COCO 2017 zips (`helpers.coco.make_coco2017_zips`) at `<url>/zips/train2017.zip` and
    `<url>/annotations/annotations_trainval2017.zip`, as the COCO server lays them out."""
    from helpers.coco import make_coco2017_zips

    root = http_server.root
    (root / "zips").mkdir()
    (root / "annotations").mkdir()
    ann_zip, img_zip = make_coco2017_zips(tmp_path)
    shutil.move(str(ann_zip), root / "annotations" / ann_zip.name)
    shutil.move(str(img_zip), root / "zips" / img_zip.name)
    return http_server


# ---------------------------------------------------------------- data and models (made once per run)


@pytest.fixture(scope="session")
def standin_testsets(tmp_path_factory) -> Path:
    """The stand-in test sets from the project's generator: 2 pairs per set at 64 px (seed 7)."""
    from spotdiff.data.standins import write_standins

    root = tmp_path_factory.mktemp("testsets")
    write_standins(root, pairs=2, size=64, seed=7)
    return root


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory) -> Path:
    """An untrained ResNet-18 CYWS at 64 px (seed 0) saved as `cyws.pt` (`helpers.models.save_tiny_cyws`)."""
    from helpers.models import save_tiny_cyws

    return save_tiny_cyws(tmp_path_factory.mktemp("model") / "cyws.pt")


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """`tiny_pipeline(params) -> root`: `helpers.pipeline.build_tiny_pipeline` run once per distinct
    params dict in the session (the data, inpaint and pairs stages; tests only read what they made)."""
    from helpers.pipeline import build_tiny_pipeline

    built: dict[str, Path] = {}

    def make(params: dict) -> Path:
        key = json.dumps(params, sort_keys=True)
        if key not in built:
            built[key] = build_tiny_pipeline(tmp_path_factory.mktemp("pipeline"), params)
        return built[key]

    return make
