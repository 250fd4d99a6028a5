"""The Prefect flow `spotdiff-pipeline` on a tiny DVC project: stages in order, retries, params
overrides run as DVC experiments (params.yaml untouched; tests/reliability/test_ui_runs.py), and the
`spotdiff-eval` artifact."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from helpers.env import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))

from flows import pipeline  # noqa: E402

from spotdiff.errors import SpotdiffError  # noqa: E402

pytestmark = pytest.mark.usefixtures("telemetry_off")


@pytest.fixture(scope="module")
def prefect_api():
    """One throw-away Prefect API for the module (the server start is most of the cost; telemetry is
    off process-wide, tests/conftest.py)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


PARAMS = textwrap.dedent("""\
    # toy params: the flow must keep this comment
    train:
      max_epochs: 1   # epochs
      lr: 0.001
    register:
      model_name: toy
    """)

DVC_YAML = textwrap.dedent("""\
    stages:
      data:
        cmd: python make_data.py
        deps: [make_data.py]
        outs: [data/source]
      train:
        cmd: python train.py
        deps: [train.py, data/source]
        params: [train.max_epochs]
        outs: [models/train.json]
      evaluate:
        cmd: python evaluate.py
        deps: [evaluate.py, models/train.json]
        outs: [eval/report.md]
    """)

# `data` fails on its first attempt (like a dropped download) and succeeds on the retry.
MAKE_DATA = textwrap.dedent("""\
    import os, pathlib
    marker = pathlib.Path("attempts.txt")
    n = int(marker.read_text()) + 1 if marker.exists() else 1
    marker.write_text(str(n))
    if n == 1:
        raise SystemExit("simulated download failure")
    os.makedirs("data/source", exist_ok=True)
    pathlib.Path("data/source/a.txt").write_text("hello")
    """)

TRAIN = textwrap.dedent("""\
    import json, os, yaml
    epochs = yaml.safe_load(open("params.yaml"))["train"]["max_epochs"]
    os.makedirs("models", exist_ok=True)
    json.dump({"epochs": epochs}, open("models/train.json", "w"))
    json.dump({"mlflow_run_id": "0123456789abcdef", "mlflow_experiment_id": "7",
               "tracking_uri": "http://127.0.0.1:5999"}, open("models/train_run.json", "w"))
    """)

EVALUATE = textwrap.dedent("""\
    import json, os
    epochs = json.load(open("models/train.json"))["epochs"]
    os.makedirs("eval", exist_ok=True)
    open("eval/report.md", "w").write(
        "# Evaluation\\n\\nSome words.\\n\\n## AP@0.5\\n\\n| method | coco_inpainted | kubric |\\n"
        "|---|---|---|\\n| cyws | 0.%d00 | 0.250 |\\n\\nMore words.\\n" % epochs)
    """)


def _sh(cmd: list[str], cwd: Path) -> str:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, f"{cmd}: {out.stdout}\n{out.stderr}"
    return out.stdout


def _commit_as_dvc_repo(repo: Path) -> None:
    """git init + dvc init the folder and commit what is in it."""
    _sh(["git", "init", "-q"], repo)
    _sh(["git", "config", "user.email", "t@example.com"], repo)
    _sh(["git", "config", "user.name", "t"], repo)
    _sh([sys.executable, "-m", "dvc", "init", "-q"], repo)
    _sh(["git", "add", "-A"], repo)
    _sh(["git", "commit", "-q", "-m", "fixture"], repo)


@pytest.fixture
def toy_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "toy"
    repo.mkdir()
    (repo / "params.yaml").write_text(PARAMS)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "make_data.py").write_text(MAKE_DATA)
    (repo / "train.py").write_text(TRAIN)
    (repo / "evaluate.py").write_text(EVALUATE)
    _commit_as_dvc_repo(repo)
    return repo


def test_overrides_round_trip_keeps_comments_and_validates(tmp_path: Path):
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    changed = pipeline.apply_overrides(params, {"train.max_epochs": 3, "train.lr": 0.001})
    assert changed == {"train.max_epochs": [1, 3]}  # lr unchanged
    text = params.read_text()
    assert "# toy params: the flow must keep this comment" in text and "# epochs" in text
    assert yaml.safe_load(text)["train"] == {"max_epochs": 3, "lr": 0.001}
    before = params.read_text()
    with pytest.raises(SpotdiffError, match="train.max_epochs"):
        pipeline.apply_overrides(params, {"train.max_epochs": 0})
    with pytest.raises(SpotdiffError, match="unknown key train.epochz"):
        pipeline.apply_overrides(params, {"train.epochz": 2})
    assert params.read_text() == before  # a rejected override leaves the file as it was


def test_ap_tables_are_extracted_with_their_heading():
    md = "# R\n\ntext\n\n## AP@0.5\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nafter\n"
    tables = pipeline._tables(md)
    assert tables == ["### AP@0.5\n\n| a | b |\n|---|---|\n| 1 | 2 |"]


def test_flow_runs_stages_in_order_with_retry_and_publishes_artifact(prefect_api, toy_repo: Path):
    from prefect.artifacts import Artifact

    params_before = (toy_repo / "params.yaml").read_text()
    result = pipeline.spotdiff_pipeline(stages=["data", "train", "evaluate"], repo=str(toy_repo),
                                        retry_delay_seconds=0)
    assert [r["stage"] for r in result["stages"]] == ["data", "train", "evaluate"]
    assert (toy_repo / "attempts.txt").read_text() == "2"  # first attempt failed, the retry passed
    assert result["overrides"] == {}
    assert (toy_repo / "params.yaml").read_text() == params_before
    lock = yaml.safe_load((toy_repo / "dvc.lock").read_text())
    assert lock["stages"]["train"]["params"]["params.yaml"]["train.max_epochs"] == 1
    assert json.loads((toy_repo / "models/train.json").read_text())["epochs"] == 1
    status = _sh([sys.executable, "-m", "dvc", "status"], toy_repo)
    assert "up to date" in status.lower() or status.strip() == "", status

    art = Artifact.get(pipeline.ARTIFACT_KEY)
    assert art is not None and art.type == "markdown"
    md = art.data
    assert "| cyws | 0.100 | 0.250 |" in md  # the AP table, with this run's value
    assert "Some words" not in md  # only the tables, not the prose
    assert "0123456789abcdef" in md
    assert "http://127.0.0.1:5999/#/experiments/7/runs/0123456789abcdef" in md

    # Second run: nothing changed, so DVC skips every stage; a new artifact version is published.
    again = pipeline.spotdiff_pipeline(stages=["evaluate"], repo=str(toy_repo), retry_delay_seconds=0)
    assert [r["up_to_date"] for r in again["stages"]] == [True], again["stages"]
    assert (toy_repo / "attempts.txt").read_text() == "2"  # data did not run again


def test_failing_stage_fails_the_flow_with_its_output(prefect_api, toy_repo: Path):
    (toy_repo / "evaluate.py").write_text("raise SystemExit('evaluation exploded')\n")
    (toy_repo / "attempts.txt").write_text("1")  # data passes first time
    with pytest.raises(pipeline.PipelineError, match="evaluation exploded"):
        pipeline.spotdiff_pipeline(stages=["evaluate"], repo=str(toy_repo), retry_delay_seconds=0)
    assert (toy_repo / "models/train.json").is_file()  # `dvc repro evaluate` ran the stale upstream


def test_workspace_lock_refuses_a_second_run(toy_repo: Path):
    with pipeline.workspace_lock(toy_repo):
        with pytest.raises(pipeline.PipelineError, match="another pipeline run"):
            with pipeline.workspace_lock(toy_repo):
                pass
    with pipeline.workspace_lock(toy_repo):  # released
        pass


def test_repo_without_dvc_yaml_is_refused(tmp_path: Path):
    with pytest.raises(pipeline.PipelineError, match="no dvc.yaml"):
        pipeline.resolve_repo(str(tmp_path))


# ---------------------------------------------------------------- the real pipeline, end to end

TINY_OVERRIDES = {
    "data.num_images": 8, "data.image_width": 128, "data.image_height": 96, "data.max_objects": 3,
    "inpaint.max_versions": 2, "pairs.pairs_per_image": 1, "pairs.val_fraction": 0.25,
    "pairs.preview_count": 2, "model.image_size": 64, "train.max_epochs": 1, "train.batch_size": 4,
    # epochs decide here, not the embedded profile's step budget and its step-based curriculum
    "train.max_steps": -1, "train.val_every_n_steps": 0, "train.warmup_steps": 0,
    "train.affine_start_step": 0, "train.affine_ramp_steps": 0,
    "register.ap_floor": 0.0,  # a 1-epoch model on 8 images is far below the embedded run's floor
    "train.preview_pairs": 2, "testsets.pairs_per_set": 2, "testsets.image_size": 128,
    "evaluate.samples_to_draw": 1,
}


@pytest.fixture
def project_copy(tmp_path: Path, monkeypatch) -> Path:
    """This repository's pipeline (dvc.yaml, params.yaml with TINY_OVERRIDES, the code it depends on)
    in a fresh git repo; no MLFLOW_TRACKING_URI: its stages use the project's default store,
    `<repo>/mlruns/mlflow.db`, also from DVC's temporary experiment copies."""
    import shutil

    from helpers.mlflow_store import reset_mlflow, use_repo_store

    repo = tmp_path / "project"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", "params.ok"):
        shutil.copy(REPO_ROOT / name, repo / name)
    pipeline.apply_overrides(repo / "params.yaml", TINY_OVERRIDES)
    (repo / ".gitignore").write_text("/mlruns/\n__pycache__/\n")
    shutil.copytree(REPO_ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _commit_as_dvc_repo(repo)
    use_repo_store(monkeypatch, repo)
    yield repo
    reset_mlflow()


@pytest.mark.slow
def test_real_pipeline_runs_every_stage_and_registers_a_champion(prefect_api, project_copy: Path):
    import mlflow
    from prefect.artifacts import Artifact

    result = pipeline.spotdiff_pipeline(repo=str(project_copy), retry_delay_seconds=0)
    assert [r["stage"] for r in result["stages"]] == list(pipeline.STAGES)
    for name in ("data/source/instances.json", "data/pairs/manifest.json", "models/cyws.pt",
                 "eval/metrics.json", "eval/report.md", "registry/registration.json"):
        assert (project_copy / name).is_file(), name
    status = _sh([sys.executable, "-m", "dvc", "status"], project_copy)
    assert "up to date" in status.lower(), status

    # A param change makes exactly the stage that reads it stale (the rest follows through its deps).
    params_text = (project_copy / "params.yaml").read_text()
    for edit, stage in ((("backend: opencv", "backend: lama"), "inpaint"), (("seed: 0\n  p_inpainted", "seed: 7\n  p_inpainted"), "pairs")):
        assert edit[0] in params_text
        (project_copy / "params.yaml").write_text(params_text.replace(edit[0], edit[1], 1))
        stale = json.loads(_sh([sys.executable, "-m", "dvc", "status", "--json"], project_copy))
        assert list(stale) == ["check_params", stage], stale  # (check_params reads the whole file)
    (project_copy / "params.yaml").write_text(params_text)

    md = Artifact.get(pipeline.ARTIFACT_KEY).data
    assert "| COCO-Inpainted (stand-in) | **all** |" in md and "SSIM AP@0.5" in md  # the AP table

    # the project's default store; asked explicitly (other tests move mlflow's global URI)
    store = f"sqlite:///{project_copy / 'mlruns/mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    first = json.loads((project_copy / "registry/registration.json").read_text())
    assert first["decision"] == "promoted"
    assert int(client.get_model_version_by_alias("spotdiff", "champion").version) == first["version"]

    # A second run with overrides (as from the UI) runs as a DVC experiment (`dvc exp run --temp`):
    # params.yaml and the workspace's outputs stay as they were, its MLflow runs land in the project's
    # store (not in DVC's temporary folder), and a model that does not beat the champion by the
    # margin becomes challenger only.
    params_before = (project_copy / "params.yaml").read_text()
    model_before = (project_copy / "models/cyws.pt").read_bytes()
    again = pipeline.spotdiff_pipeline(overrides={"train.max_epochs": 2, "register.promote_margin": 0.9},
                                       repo=str(project_copy), retry_delay_seconds=0)
    assert (project_copy / "params.yaml").read_text() == params_before
    assert (project_copy / "models/cyws.pt").read_bytes() == model_before
    name, rev = again["experiment"]["name"], again["experiment"]["rev"]
    exp_params = yaml.safe_load(_sh(["git", "show", f"{rev}:params.yaml"], project_copy))
    assert exp_params["train"]["max_epochs"] == 2 and exp_params["register"]["promote_margin"] == 0.9
    challenger = client.get_model_version_by_alias("spotdiff", "challenger")
    assert int(challenger.version) == first["version"] + 1
    assert int(client.get_model_version_by_alias("spotdiff", "champion").version) == first["version"]
    # linked both ways: the experiment commit names the flow's MLflow run; the runs name the experiment
    flow_run = client.get_run(again["mlflow_run_id"])
    assert flow_run.data.tags["spotdiff.dvc_experiment"] == name
    assert flow_run.data.tags["spotdiff.dvc_experiment_rev"] == rev
    assert again["mlflow_run_id"] in _sh(["git", "log", "-1", "--format=%B", rev], project_copy)
    train_run = client.get_run(challenger.run_id)
    assert train_run.data.tags["spotdiff.dvc_experiment"] == name
    assert train_run.data.tags["mlflow.parentRunId"] == again["mlflow_run_id"]
    assert not list((project_copy / ".dvc/tmp").rglob("mlflow.db"))
