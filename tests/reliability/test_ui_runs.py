"""F11 item 9 / F13: runs triggered with overrides (the Prefect UI's parameters) leave params.yaml as
it was, never inherit an earlier run's overrides, are recorded as DVC experiments linked both ways
with an MLflow run, and a run that did not evaluate the current model never publishes old AP."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from helpers.env import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from flows import pipeline  # noqa: E402

from test_flows import _sh, toy_repo  # noqa: E402,F401  (the toy DVC project fixture)

pytestmark = pytest.mark.usefixtures("telemetry_off")


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def committed_toy(toy_repo: Path, mlflow_store) -> Path:  # noqa: F811
    """The toy project with its flaky download already past (the temp copy starts from git)."""
    (toy_repo / "attempts.txt").write_text("1")
    _sh(["git", "add", "attempts.txt"], toy_repo)
    _sh(["git", "commit", "-q", "-m", "past the flaky download"], toy_repo)
    return toy_repo


@pytest.mark.slow
def test_two_ui_runs_with_overrides_leave_params_yaml_and_do_not_inherit(prefect_api, committed_toy: Path,
                                                                          mlflow_store):
    import mlflow
    from prefect.artifacts import Artifact

    repo = committed_toy
    params_before = (repo / "params.yaml").read_bytes()
    first = pipeline.spotdiff_pipeline(overrides={"train.max_epochs": 4, "train.lr": 0.01},
                                       repo=str(repo), retry_delay_seconds=0)
    assert (repo / "params.yaml").read_bytes() == params_before
    second = pipeline.spotdiff_pipeline(overrides={"train.max_epochs": 3}, repo=str(repo),
                                        retry_delay_seconds=0)
    assert (repo / "params.yaml").read_bytes() == params_before
    assert _sh(["git", "status", "--porcelain", "--untracked-files=no"], repo).strip() == ""

    exps = [first["experiment"], second["experiment"]]
    assert exps[0]["name"] != exps[1]["name"]
    p1, p2 = (yaml.safe_load(_sh(["git", "show", f"{e['rev']}:params.yaml"], repo)) for e in exps)
    assert p1["train"] == {"max_epochs": 4, "lr": 0.01}
    assert p2["train"] == {"max_epochs": 3, "lr": 0.001}  # lr NOT inherited from the first run
    import dvc.api

    t2 = json.loads(dvc.api.read("models/train.json", repo=str(repo), rev=exps[1]["rev"]))  # in the cache
    assert t2 == {"epochs": 3}
    # DVC lists both as experiments of the baseline
    shown = _sh([sys.executable, "-m", "dvc", "exp", "list", "--name-only"], repo).split()
    assert {exps[0]["name"], exps[1]["name"]} <= set(shown)

    client = mlflow.MlflowClient(mlflow_store)
    for result, exp in ((first, exps[0]), (second, exps[1])):
        run = client.get_run(result["mlflow_run_id"])
        assert run.data.tags["spotdiff.dvc_experiment"] == exp["name"]
        assert run.data.tags["spotdiff.dvc_experiment_rev"] == exp["rev"]
        assert run.info.status == "FINISHED"
        assert result["mlflow_run_id"] in _sh(["git", "log", "-1", "--format=%B", exp["rev"]], repo)
    assert client.get_run(second["mlflow_run_id"]).data.params == {"override.train.max_epochs": "3"}

    md = Artifact.get(pipeline.ARTIFACT_KEY).data
    assert exps[1]["name"] in md and "| cyws | 0.300 | 0.250 |" in md  # this experiment's AP


def test_a_train_only_run_does_not_publish_the_previous_models_ap(prefect_api, committed_toy: Path):
    from prefect.artifacts import Artifact

    repo = committed_toy
    pipeline.spotdiff_pipeline(stages=["evaluate"], repo=str(repo), retry_delay_seconds=0)
    assert "| cyws | 0.100 |" in Artifact.get(pipeline.ARTIFACT_KEY).data
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text.replace("max_epochs: 1", "max_epochs: 2"))
    pipeline.spotdiff_pipeline(stages=["train"], repo=str(repo), retry_delay_seconds=0)
    md = Artifact.get(pipeline.ARTIFACT_KEY).data
    assert "0.100" not in md and "Stale" in md  # the old model's AP is not shown beside the new run
    assert "Stale: models/train_run.json" not in md  # the training record is this run's


def test_an_invalid_override_runs_nothing(prefect_api, committed_toy: Path):
    from spotdiff.errors import SpotdiffError

    repo = committed_toy
    before = (repo / "params.yaml").read_bytes()
    with pytest.raises(SpotdiffError, match="train.max_epochs"):
        pipeline.spotdiff_pipeline(overrides={"train.max_epochs": 0}, repo=str(repo), retry_delay_seconds=0)
    assert (repo / "params.yaml").read_bytes() == before
    assert _sh(["git", "for-each-ref", "refs/exps"], repo).strip() == ""
