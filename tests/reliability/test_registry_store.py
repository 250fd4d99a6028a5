"""F11 items 7 and 8: the registry never promotes a model over itself, never registers the same model
twice, leaves no orphan version after a crash, turns a locked store into one line, marks killed runs;
the tracking store is found from DVC's temporary experiment folders, and a training run this store
does not hold (a clone + `dvc pull`) is a warning, not a stop. Real SQLite MLflow stores throughout."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.env import SPOTDIFF, subprocess_env
from helpers.mlflow_store import start_training_run, write_run_record
from helpers.models import save_tiny_cyws

MODEL_NAME = "rel-test"
METRIC = "cyws/coco_inpainted/all/ap50"
PARAMS = f"""\
register:
  model_name: {MODEL_NAME}
  primary_metric: {METRIC}
  promote_margin: 0.0
  ap_floor: 0.0
mlflow:
  experiment: reliability
"""


@pytest.fixture
def ws(mlflow_repo: Path, monkeypatch):
    """A repo folder (cwd) with params.yaml, the project's default SQLite store, a training run."""
    from spotdiff.params import load_params

    monkeypatch.setenv("SPOTDIFF_GIT_COMMIT", "0" * 40)
    (mlflow_repo / "params.yaml").write_text(PARAMS)
    params = load_params(mlflow_repo / "params.yaml")
    run_id = start_training_run(params)
    write_run_record(mlflow_repo / "models/train_run.json", run_id)
    return {"root": mlflow_repo, "params": params, "run_id": run_id}


def _metrics(root: Path, ap50: float) -> Path:
    path = root / "eval/metrics.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"cyws": {"coco_inpainted": {"all": {"ap50": ap50}}}}))
    return path


def _model(root: Path, seed: int) -> Path:
    return save_tiny_cyws(root / "models/cyws.pt", seed=seed, attention="coam", attention_layers=1,
                          scse=False, max_boxes=10)


def _register(ws: dict, ap50: float, warn=None, run_info: str = "models/train_run.json") -> dict:
    from spotdiff.stages import register as stage

    root = ws["root"]
    return stage.run(ws["params"], root / "models/cyws.pt", root / run_info, _metrics(root, ap50),
                     root / "registry/registered.json", record=root / "registry/registration.json",
                     warn=warn or (lambda line: None))


def _client():
    import mlflow

    return mlflow.MlflowClient(mlflow.get_tracking_uri())


def _versions(client) -> list[int]:
    return sorted(int(v.version) for v in client.search_model_versions(f"name = '{MODEL_NAME}'"))


def _artifact_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "mlruns/artifacts").rglob("*") if p.is_file())


def test_champion_compared_at_full_precision_against_its_run_metric(ws):
    from spotdiff.registry.rule import champion_info

    ap = 0.12345678912345
    _model(ws["root"], 0)
    first = _register(ws, ap)
    assert first["decision"] == "promoted"
    champ = champion_info(_client(), MODEL_NAME, METRIC)
    assert champ["value"] == ap and champ["value_source"] == "run"  # not the tag rounded to 6 digits
    _model(ws["root"], 1)
    tie = _register(ws, ap)  # another model, exactly the same AP: a tie keeps the champion
    assert tie["decision"] == "kept" and tie["champion_after"] == first["version"]
    _model(ws["root"], 2)
    better = _register(ws, ap + 1e-12)  # better, however slightly (margin 0), at full precision
    assert better["decision"] == "promoted"
    # the champion's value is the one its own run held when it was registered, although the same
    # training run has since logged other values
    assert champion_info(_client(), MODEL_NAME, METRIC)["value"] == ap + 1e-12


def test_the_same_model_is_not_registered_or_uploaded_again(ws):
    _model(ws["root"], 0)
    first = _register(ws, 0.3)
    size = _artifact_bytes(ws["root"])
    warnings: list[str] = []
    again = _register(ws, 0.3, warn=warnings.append)
    assert again["decision"] == "unchanged" and again["version"] == first["version"]
    assert _versions(_client()) == [first["version"]]
    assert _artifact_bytes(ws["root"]) == size  # nothing uploaded
    assert len(warnings) == 1 and "already version 1" in warnings[0]
    record = json.loads((ws["root"] / "registry/registration.json").read_text())
    assert record["decision"] == "unchanged" and "champion" in record["aliases"]


def test_a_crash_after_creating_a_version_leaves_no_orphan(ws, monkeypatch):
    """The process dies right after the version is created (before its aliases): the version already
    carries its md5 and metrics, and the next run adopts it instead of adding another."""
    from mlflow.tracking import MlflowClient

    _model(ws["root"], 0)
    real = MlflowClient.set_registered_model_alias

    def crash(self, *args, **kwargs):
        raise KeyboardInterrupt("killed right after create_model_version")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", crash)
    with pytest.raises(KeyboardInterrupt):
        _register(ws, 0.3)
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real)
    client = _client()
    (orphan,) = client.search_model_versions(f"name = '{MODEL_NAME}'")
    assert orphan.tags["model_file_md5"] and orphan.tags[f"metric.{METRIC}"] == "0.3"
    assert "decision" not in orphan.tags
    size = _artifact_bytes(ws["root"])

    adopted = _register(ws, 0.3)
    assert adopted["version"] == int(orphan.version) and adopted["decision"] == "promoted"
    assert "adopted" in adopted["reason"]
    assert _versions(client) == [int(orphan.version)]
    assert _artifact_bytes(ws["root"]) == size
    assert int(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == adopted["version"]


def test_a_locked_registry_database_is_one_line_and_exit_2(ws):
    root = ws["root"]
    _model(root, 0)
    _metrics(root, 0.3)
    db = sqlite3.connect(root / "mlruns/mlflow.db", timeout=1)
    db.execute("BEGIN EXCLUSIVE")  # another process holds the whole database
    try:
        proc = subprocess.run([str(SPOTDIFF), "register", "--params", "params.yaml"], cwd=root,
                              capture_output=True, text=True, timeout=300,
                              env=subprocess_env(drop=("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")))
    finally:
        db.rollback()
        db.close()
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("spotdiff: error:")]
    assert len(errors) == 1 and "locked" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (root / "registry/registered.json").exists()
    assert _versions(_client()) == []  # and the store is usable again


KILLED_CHILD = """\
import sys, time, mlflow
from spotdiff import tracking
from spotdiff.params import load_params
tracking.setup_mlflow(load_params("params.yaml"))
run = mlflow.start_run(run_name="train (killed)")
tracking.mark_owner(mlflow.MlflowClient(), run.info.run_id)
print(run.info.run_id, flush=True)
time.sleep(600)
"""


def test_a_killed_training_run_is_marked_killed_by_the_next_stage(ws):
    from spotdiff.tracking import setup_mlflow

    proc = subprocess.Popen([sys.executable, "-c", KILLED_CHILD], cwd=ws["root"], stdout=subprocess.PIPE,
                            text=True, env=subprocess_env(drop=("MLFLOW_TRACKING_URI",)))
    try:
        run_id = proc.stdout.readline().strip()
        assert run_id, "the child did not start its run"
        assert _client().get_run(run_id).info.status == "RUNNING"
        setup_mlflow(ws["params"])  # the owner is alive: left alone
        assert _client().get_run(run_id).info.status == "RUNNING"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    setup_mlflow(ws["params"])  # what every stage does first
    assert _client().get_run(run_id).info.status == "KILLED"
    assert _client().get_run(ws["run_id"]).info.status == "FINISHED"  # others untouched


def test_an_unknown_training_run_warns_and_links_evaluate_and_register_by_md5(ws):
    """After a clone + `dvc pull`, train_run.json (if present) names a run of another machine's store."""
    from spotdiff.evaluation.mlflow_log import check_run

    root = ws["root"]
    model = _model(root, 0)
    ghost = write_run_record(root / "models/ghost.json", "0" * 32)
    warnings: list[str] = []
    eval_run = check_run(ws["params"], "0" * 32, ghost, warnings.append, model)
    assert eval_run != "0" * 32 and "not in the tracking store" in warnings[0]
    from spotdiff.fsutil import file_digest

    assert _client().get_run(eval_run).data.tags["spotdiff.model_md5"] == file_digest(model)
    warnings.clear()
    result = _register(ws, 0.3, warn=warnings.append, run_info="models/ghost.json")
    assert "not in the tracking store" in warnings[0]
    assert result["mlflow_run_id"] == eval_run  # found by the model's md5
    assert result["decision"] == "promoted"


def test_the_store_of_a_dvc_temp_experiment_is_the_projects(tmp_path, monkeypatch):
    from spotdiff.tracking import find_repo_root, tracking_uri

    project = tmp_path / "project"
    exp = project / ".dvc/tmp/exps/tmpab12cd"
    (exp / "models").mkdir(parents=True)
    for folder in (project, exp):
        (folder / "params.yaml").write_text("{}\n")
        (folder / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(exp / "models")
    assert find_repo_root() == project.resolve()
    assert tracking_uri(create=False) == f"sqlite:///{project.resolve() / 'mlruns/mlflow.db'}"
    monkeypatch.setenv("DVC_ROOT", str(project))  # as `dvc exp run --temp` sets it
    assert find_repo_root() == project.resolve()
    monkeypatch.chdir(project)
    assert find_repo_root() == project.resolve()
    # an ordinary repository elsewhere is its own root
    other = tmp_path / "clone"
    other.mkdir()
    (other / "params.yaml").write_text("{}\n")
    assert find_repo_root(other) == other.resolve()


@pytest.mark.slow
def test_two_registrations_at_once_make_one_version(ws):
    """Two `spotdiff register` processes of the same model at the same moment: one version; the
    second waits for the first and then finds the model already registered."""
    root = ws["root"]
    _model(root, 0)
    _metrics(root, 0.3)
    env = subprocess_env(drop=("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"))
    procs = [subprocess.Popen([str(SPOTDIFF), "register", "--params", "params.yaml",
                               "--record", f"registry/registration{i}.json"], cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    assert len(_versions(_client())) == 1
    decisions = sorted(json.loads((root / f"registry/registration{i}.json").read_text())["decision"]
                       for i in range(2))
    assert decisions == ["promoted", "unchanged"]
