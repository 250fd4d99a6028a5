"""Registry references resolve in a fresh process: `spotdiff detect --method cyws` with no --model uses
the champion from the repository's store, `--model models:/NAME@ALIAS` works from any folder given
MLFLOW_TRACKING_URI, and neither leaves an `mlflow.db` or `mlruns` behind in the working folder.

Each detect runs as its own process, so no MLflow state set earlier in the test process can make a
reference resolve that would not resolve for a user.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from helpers.env import SPOTDIFF, subprocess_env
from helpers.images import write_image_pair
from helpers.mlflow_store import STORE_ENV, reset_mlflow, start_training_run, use_repo_store, write_run_record
from helpers.models import save_tiny_cyws

CHAMPION_BOXES, CHALLENGER_BOXES = 7, 10  # max_boxes of the two versions: tells which one answered


def _pair(folder: Path) -> None:
    write_image_pair(folder, size=(72, 96), change=(20, 50, 30, 70), value=250)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A repository folder (params.yaml, SQLite store under mlruns/) whose registry holds `spotdiff`
    version 1 (champion, max_boxes 7) and version 2 (challenger only, max_boxes 10)."""
    import mlflow

    from spotdiff.params import load_params
    from spotdiff.stages.register import run as register

    root = tmp_path_factory.mktemp("repo")
    with pytest.MonkeyPatch.context() as mp:
        use_repo_store(mp, root)
        try:
            (root / "params.yaml").write_text("register:\n  model_name: spotdiff\n  promote_margin: 0.01\n"
                                              "mlflow:\n  experiment: detect-registry-test\n")
            params = load_params(root / "params.yaml")
            run_id = start_training_run(params, root)
            write_run_record(root / "models/train_run.json", run_id)
            (root / "eval").mkdir()
            for ap, boxes in ((0.30, CHAMPION_BOXES), (0.30, CHALLENGER_BOXES)):
                save_tiny_cyws(root / "models/cyws.pt", attention_layers=1, scse=False, max_boxes=boxes)
                (root / "eval/metrics.json").write_text(
                    json.dumps({"cyws": {"coco_inpainted": {"all": {"ap50": ap}}}}))
                register(params, root / "models/cyws.pt", root / "models/train_run.json",
                         root / "eval/metrics.json", root / "registry/registered.json",
                         record=root / "registry/registration.json", root=root)
            (root / "models/cyws.pt").unlink()  # only the registry can answer now
            uri = mlflow.get_tracking_uri()
        finally:
            reset_mlflow()
    _pair(root)
    return {"root": root, "uri": uri, "run_id": run_id}


def _env(**extra: str) -> dict:
    return subprocess_env(drop=STORE_ENV, PYTHONWARNINGS="ignore", **extra)


def _detect(folder: Path, env: dict, *model: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SPOTDIFF), "detect", "a.png", "b.png", "--method", "cyws", *model,
                           "--json", "r.json", "--out", "o"], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300)


def test_default_champion_from_the_repository_root(repo):
    root = repo["root"]
    before = sorted(p.name for p in root.iterdir())
    done = _detect(root, _env())
    assert done.returncode == 0, done.stderr
    report = json.loads((root / "r.json").read_text())
    assert report["model"] == "models:/spotdiff@champion"
    assert all(len(img["boxes"]) == CHAMPION_BOXES for img in report["images"])  # version 1 answered
    assert sorted(p.name for p in root.iterdir()) == sorted(before + ["o", "r.json"])  # no mlflow.db


def test_registry_reference_from_another_folder_with_the_env(repo, tmp_path):
    _pair(tmp_path)
    done = _detect(tmp_path, _env(MLFLOW_TRACKING_URI=repo["uri"]), "--model", "models:/spotdiff@champion")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["model"] == "models:/spotdiff@champion"
    assert all(len(img["boxes"]) == CHAMPION_BOXES for img in report["images"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "o", "r.json"]


def test_without_a_store_it_is_one_clear_line_and_nothing_is_created(repo, tmp_path):
    _pair(tmp_path)
    done = _detect(tmp_path, _env(), "--model", "models:/spotdiff@champion")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no MLflow store" in done.stderr
    assert "set MLFLOW_TRACKING_URI" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]


def test_every_reference_form_resolves_without_touching_mlflow_globals(repo, tmp_path, monkeypatch):
    """In-process: versions, aliases, logged-model ids and runs:/ refs; mlflow's globals untouched."""
    import mlflow

    from spotdiff.errors import SpotdiffError
    from spotdiff.methods.learned import load_reference

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", repo["uri"])
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    record = json.loads((repo["root"] / "registry/registration.json").read_text())
    globals_before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    cases = {"models:/spotdiff@champion": CHAMPION_BOXES, "models:/spotdiff@challenger": CHALLENGER_BOXES,
             "models:/spotdiff/1": CHAMPION_BOXES, "models:/spotdiff/2": CHALLENGER_BOXES,
             record["logged_model_uri"]: CHALLENGER_BOXES,  # the last registered version's logged model
             f"runs:/{repo['run_id']}/model": None}
    for ref, boxes in cases.items():
        model = load_reference(ref)
        if boxes is not None:
            assert model.max_boxes == boxes, ref
    for ref, message in (("models:/spotdiff@nobody", "alias nobody not found"),
                         ("models:/ghost/1", "ghost"), ("models:/spotdiff/latest", "not a registry reference")):
        with pytest.raises(SpotdiffError, match=message):
            load_reference(ref)
    # `spotdiff evaluate --model` reads the same references
    from spotdiff.evaluation.runner import build_detectors
    from spotdiff.params import Params

    detectors = build_detectors(Params(), "models:/spotdiff@champion")
    assert detectors["cyws"].model.max_boxes == CHAMPION_BOXES
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == globals_before
    assert sorted(p.name for p in tmp_path.iterdir()) == []
