"""The model's life in MLflow: `register` logs a real (tiny, untrained) CYWS checkpoint as a pyfunc into
its training run, registers versions with challenger/champion aliases by the champion rule, `promote`
moves an alias by hand, and the registered model loads (and serves) and returns boxes for two images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from helpers.env import subprocess_env
from helpers.http import free_port
from helpers.mlflow_store import start_training_run, write_run_record
from helpers.models import save_tiny_cyws
from spotdiff.errors import SpotdiffError
from spotdiff.metricsfile import flatten_metrics
from spotdiff.registry.rule import decide

MODEL_NAME = "spotdiff-test"
METRIC = "cyws/coco_inpainted/all/ap50"
PARAMS = f"""\
register:
  model_name: {MODEL_NAME}
  primary_metric: {METRIC}
  promote_margin: 0.01
mlflow:
  experiment: registry-test
"""


def _has_detector() -> bool:
    try:
        import spotdiff.methods.learned  # noqa: F401
        import spotdiff.models.cyws  # noqa: F401
    except ImportError:
        return False
    return True


needs_detector = pytest.mark.skipif(not _has_detector(),
                                    reason="spotdiff.methods.learned (CywsDetector) not present yet")


@pytest.fixture
def workspace(mlflow_repo: Path, monkeypatch):
    """A repo folder with params.yaml, a fresh SQLite MLflow store, and a finished 'training' run."""
    from spotdiff.params import load_params

    monkeypatch.delenv("SPOTDIFF_GIT_COMMIT", raising=False)
    (mlflow_repo / "params.yaml").write_text(PARAMS)
    params = load_params(mlflow_repo / "params.yaml")
    run_id = start_training_run(params)
    write_run_record(mlflow_repo / "models" / "train_run.json", run_id)
    return {"root": mlflow_repo, "params": params, "run_id": run_id}


def _write_metrics(root: Path, ap50: float) -> Path:
    path = root / "eval" / "metrics.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"cyws": {"coco_inpainted": {"all": {"ap50": ap50, "n": 24}},
                                         "kubric": {"all": {"ap50": 0.1}}},
                                "ssim": {"coco_inpainted": {"all": {"ap50": 0.05}}}}))
    return path


def _write_model(root: Path, seed: int = 0) -> Path:
    return save_tiny_cyws(root / "models" / "cyws.pt", seed=seed, attention="coam", attention_layers=1,
                          scse=False, max_boxes=10)


def _register(ws: dict, ap50: float, run_info: str = "models/train_run.json", warn=None) -> dict:
    from spotdiff.stages import register as stage

    root = ws["root"]
    model = root / "models" / "cyws.pt"
    if not model.exists():
        _write_model(root)
    return stage.run(ws["params"], model, root / run_info, _write_metrics(root, ap50),
                     root / "registry/registered.json", record=root / "registry/registration.json",
                     warn=warn or (lambda line: None))


# ---------------------------------------------------------------- pure logic


def test_flatten_metrics_keeps_numeric_leaves_only():
    flat = flatten_metrics({"cyws": {"coco": {"all": {"ap50": 0.4, "n": 3, "ok": True, "name": "x",
                                                     "bad": float("nan")}}}})
    assert flat == {"cyws/coco/all/ap50": 0.4, "cyws/coco/all/n": 3.0}


def test_champion_rule():
    assert decide(0.3, None, 0.0, 0.0, "m")[0] is True
    assert decide(0.3, None, 0.0, 0.5, "m")[0] is False  # below the floor, even with no champion
    champ = {"version": 1, "value": 0.30}
    assert decide(0.32, champ, 0.01, 0.0, "m")[0] is True
    ok, why = decide(0.305, champ, 0.01, 0.0, "m")
    assert ok is False and "margin 0.0100" in why
    assert decide(0.30, champ, 0.0, 0.0, "m")[0] is False  # a tie does not move the champion
    ok, why = decide(0.9, {"version": 4, "value": None}, 0.0, 0.0, "m")
    assert ok is False and "version 4" in why


# ---------------------------------------------------------------- user errors


def test_register_reports_missing_inputs_clearly(workspace):
    from spotdiff.stages.register import run as register

    root, params = workspace["root"], workspace["params"]
    out, record = root / "registry/registered.json", root / "registry/registration.json"
    run_info = root / "models/train_run.json"
    metrics = _write_metrics(root, 0.2)
    with pytest.raises(SpotdiffError, match="trained model not found"):
        register(params, root / "models/nope.pt", run_info, metrics, out)
    model = root / "models" / "cyws.pt"
    model.write_bytes(b"not used before the checks")
    with pytest.raises(SpotdiffError, match="evaluation metrics not found"):
        register(params, model, run_info, root / "eval/none.json", out)
    (root / "eval/other.json").write_text(json.dumps({"ssim": {"x": 1.0}}))
    with pytest.raises(SpotdiffError, match="no metric cyws/coco_inpainted/all/ap50"):
        register(params, model, run_info, root / "eval/other.json", out)
    (root / "eval/null.json").write_text(json.dumps({"cyws": {"coco_inpainted": {"all": {"ap50": None}}}}))
    with pytest.raises(SpotdiffError, match="is null"):
        register(params, model, run_info, root / "eval/null.json", out)
    (root / "models/bad.json").write_text("{not json")
    with pytest.raises(SpotdiffError, match="not valid JSON"):
        register(params, model, root / "models/bad.json", metrics, out)
    assert not out.exists() and not record.exists()


@needs_detector
def test_register_without_the_training_run_logs_into_a_new_run(workspace):
    """Training restored from DVC's run cache leaves no train_run.json: the model still registers,
    into a run of its own tagged with the model's md5, and the user is told."""
    import mlflow
    from mlflow.tracking import MlflowClient

    warnings: list[str] = []
    result = _register(workspace, 0.3, run_info="models/missing.json", warn=warnings.append)
    assert len(warnings) == 1 and "not found" in warnings[0] and "new MLflow run" in warnings[0]
    assert result["version"] == 1 and result["mlflow_run_id"] != workspace["run_id"]
    run = MlflowClient(mlflow.get_tracking_uri()).get_run(result["mlflow_run_id"])
    model_md5 = json.loads((workspace["root"] / "registry/registered.json").read_text())["model_md5"]
    assert run.data.tags["spotdiff.model_md5"] == model_md5
    # A run record naming another model is not trusted either.
    (workspace["root"] / "models/other.json").write_text(json.dumps(
        {"mlflow_run_id": workspace["run_id"], "model_md5": "f" * 32}))
    warnings.clear()
    again = _register(workspace, 0.3, run_info="models/other.json", warn=warnings.append)
    assert "describes another model" in warnings[0] and again["mlflow_run_id"] != workspace["run_id"]


def test_registered_json_is_the_same_bytes_for_the_same_model(workspace):
    """The DVC output of the register stage holds no version, run id or time: a fresh clone's
    `dvc repro` must reproduce dvc.lock."""
    root = workspace["root"]
    _register(workspace, 0.3)
    first = (root / "registry/registered.json").read_bytes()
    record = json.loads((root / "registry/registration.json").read_text())
    second_result = _register(workspace, 0.3)
    assert (root / "registry/registered.json").read_bytes() == first
    assert second_result["version"] == record["version"]  # the same model is not registered again
    assert second_result["decision"] == "unchanged"


def test_promote_rejects_unknown_version(workspace):
    from spotdiff.registry.versions import promote_version

    with pytest.raises(SpotdiffError, match="version 7: not in the registry"):
        promote_version(workspace["params"], "7")
    with pytest.raises(SpotdiffError, match="not a model version number"):
        promote_version(workspace["params"], "v1")


# ---------------------------------------------------------------- the model's life


@needs_detector
def test_register_promote_and_predict(workspace):
    import mlflow
    from mlflow.tracking import MlflowClient

    from spotdiff.cli import main

    root, run_id = workspace["root"], workspace["run_id"]
    # The model's md5 comes from dvc.lock when the train stage recorded it there.
    model_path = _write_model(root)
    (root / "dvc.lock").write_text("schema: '2.0'\nstages:\n  train:\n    cmd: spotdiff train\n"
                                   "    outs:\n    - path: models/cyws.pt\n"
                                   "      md5: 0123456789abcdef0123456789abcdef\n      size: 1\n")
    first = _register(workspace, 0.30)
    assert first["version"] == 1 and first["decision"] == "promoted"
    assert first["aliases"] == ["challenger", "champion"] and first["champion_before"] is None
    assert first["model_md5"] == {"md5": "0123456789abcdef0123456789abcdef", "source": "dvc.lock",
                                  "stage": "train"}
    saved = json.loads((root / "registry/registration.json").read_text())
    assert saved["version"] == 1 and saved["mlflow_run_id"] == run_id

    client = MlflowClient()
    mv = client.get_model_version(MODEL_NAME, "1")
    assert mv.run_id == run_id  # registered from the training run
    assert mv.tags[f"metric.{METRIC}"] == "0.3"
    assert mv.tags["dvc_model_md5"] == "0123456789abcdef0123456789abcdef"
    assert "git_commit" in mv.tags and "git_dirty" in mv.tags
    assert not mv.current_stage or mv.current_stage == "None"  # aliases only, no stages
    run = client.get_run(run_id)
    assert run.data.metrics[METRIC] == pytest.approx(0.30)  # one run: training + eval metrics
    assert run.data.metrics["train/loss"] == pytest.approx(1.0)
    history = client.get_metric_history(run_id, METRIC)
    again = _register(workspace, 0.30)  # the same model again: no new version, no duplicate entry
    assert again["version"] == 1 and again["decision"] == "unchanged"
    assert len(client.get_metric_history(run_id, METRIC)) == len(history) == 1

    (root / "dvc.lock").unlink()
    _write_model(root, seed=1)  # another model
    second = _register(workspace, 0.305)  # not better by more than the 0.01 margin
    assert second["version"] == 2 and second["decision"] == "kept"
    assert second["champion_before"]["version"] == 1 and second["champion_after"] == 1
    assert "margin" in second["reason"]
    assert second["model_md5"]["source"] == "file"
    assert int(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == 1
    assert int(client.get_model_version_by_alias(MODEL_NAME, "challenger").version) == 2

    _write_model(root, seed=2)
    third = _register(workspace, 0.40)
    assert third["version"] == 3 and third["decision"] == "promoted"
    assert int(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == 3

    # By hand, through the CLI: champion back to version 2; an unknown version is a clear error.
    assert main(["promote", "2", "--params", str(root / "params.yaml")]) == 0
    assert int(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == 2
    assert main(["promote", "9", "--params", str(root / "params.yaml")]) == 2

    # The champion loads as a pyfunc and finds boxes in each image's own pixels (different sizes).
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    rng = np.random.default_rng(0)
    img_a = rng.integers(0, 255, size=(70, 90, 3), dtype=np.uint8)
    img_b = img_a.copy()
    img_b[10:40, 20:60] = 255
    out = model.predict({"image_a": img_a, "image_b": img_b[:, :80]})
    assert set(out) == {"boxes_a", "scores_a", "boxes_b", "scores_b"}
    boxes_a, scores_a = np.asarray(out["boxes_a"]), np.asarray(out["scores_a"])
    assert 1 <= len(boxes_a) <= 10 and boxes_a.shape[1] == 4 and len(scores_a) == len(boxes_a)
    assert np.all(np.diff(scores_a) <= 1e-9)  # sorted by score
    assert boxes_a[:, [0, 2]].max() <= 90 + 1e-6 and boxes_a[:, [1, 3]].max() <= 70 + 1e-6
    boxes_b = np.asarray(out["boxes_b"])
    assert len(boxes_b) == 0 or boxes_b[:, [0, 2]].max() <= 80 + 1e-6
    assert model_path.exists()

    # `spotdiff detect --method cyws` with no --model uses the registry's champion (here version 2).
    from PIL import Image

    from spotdiff.detect import default_model_ref

    assert default_model_ref() == f"models:/{MODEL_NAME}@champion"
    Image.fromarray(img_a).save(root / "a.png")
    Image.fromarray(img_b).save(root / "b.png")
    assert main(["detect", "a.png", "b.png", "--method", "cyws", "--json", "r.json", "--out", "o"]) == 0
    report = json.loads((root / "r.json").read_text())
    assert report["model"] == f"models:/{MODEL_NAME}@champion" and len(report["images"][0]["boxes"]) >= 1


# ---------------------------------------------------------------- serving over HTTP


@needs_detector
@pytest.mark.slow
def test_served_champion_answers_with_boxes(workspace):
    import mlflow

    record = _register(workspace, 0.3)
    assert "champion" in record["aliases"]
    port = free_port()
    env = subprocess_env(venv_on_path=True, MLFLOW_TRACKING_URI=mlflow.get_tracking_uri())
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL_NAME}@champion",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    log = workspace["root"] / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=workspace["root"], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            assert proc.poll() is None, f"server exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"server not up in 120 s: {log.read_text()[-3000:]}"
            time.sleep(0.5)
        img = np.full((48, 64, 3), 80, dtype=np.uint8)
        changed = img.copy()
        changed[8:24, 16:40] = 250
        body = json.dumps({"inputs": {"image_a": img.tolist(), "image_b": changed.tolist()}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
        pred = answer["predictions"]
        assert set(pred) == {"boxes_a", "scores_a", "boxes_b", "scores_b"}
        assert len(pred["boxes_a"]) >= 1 and all(len(b) == 4 for b in pred["boxes_a"])
        assert len(pred["scores_a"]) == len(pred["boxes_a"])
    finally:
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---------------------------------------------------------------- importing the authors' checkpoint


@needs_detector
def test_import_published_checkpoint_as_champion(workspace, capsys):
    """`spotdiff import-checkpoint` registers the authors' file (published layout, cuda-tagged) in our
    format, tagged with its origin, md5s and the paper's numbers; the champion then loads as it."""
    import hashlib

    import torch
    from mlflow.tracking import MlflowClient

    from helpers.models import random_reference_model, write_published
    from spotdiff.cli import main
    from spotdiff.methods.learned import load_reference
    from spotdiff.models import official

    root = workspace["root"]
    params = str(root / "params.yaml")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        original = random_reference_model(seed=3)
        ckpt = write_published(root / official.PUBLISHED_FILE_NAME, official.to_published(original.state_dict()),
                               cuda_tagged=True)
        # Bad files are refused before MLflow is touched: nothing gets registered.
        (root / "broken.ckpt").write_bytes(ckpt.read_bytes()[:4096])
        assert main(["import-checkpoint", str(root / "broken.ckpt"), "--params", params]) == 2
        assert main(["import-checkpoint", str(ckpt), "--params", params, "--alias", "best"]) == 2
        err = capsys.readouterr().err
        assert err.count("spotdiff: error: ") == 2 and len(err.strip().splitlines()) == 2
        client = MlflowClient()
        assert not client.search_registered_models(f"name = '{MODEL_NAME}'")

        assert main(["import-checkpoint", str(ckpt), "--params", params, "--alias", "champion"]) == 0
        out = capsys.readouterr().out
        assert f"models:/{MODEL_NAME}/1" in out and "champion -> version 1" in out and "coco_inpainted 0.63" in out
        mv = client.get_model_version_by_alias(MODEL_NAME, "champion")
        assert str(mv.version) == "1"
        tags = mv.tags
        assert tags["source_md5"] == hashlib.md5(ckpt.read_bytes()).hexdigest()
        assert tags["source_file"] == official.PUBLISHED_FILE_NAME and "published" in tags["origin"]
        assert tags["source_format"] == "pytorch-lightning 1.5.8" and tags["source_epoch"] == "41"
        assert {k: tags[f"paper_ap50.{k}"] for k in official.PAPER_AP50} == {
            "coco_inpainted": "0.63", "synthtext_change": "0.89", "virat_std": "0.54", "kubric_change": "0.76"}
        assert not any(k.startswith("metric.") for k in tags)  # the champion rule never compares against them
        assert len(tags["model_md5"]) == 32

        champion = load_reference(f"models:/{MODEL_NAME}@champion")
        assert champion.config["image_size"] == 256 and champion.config["attention_scale"] == "none"
        expected = original.state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in champion.state_dict().items())

        # --alias none registers a version and moves nothing.
        assert main(["import-checkpoint", str(ckpt), "--params", params, "--alias", "none"]) == 0
        assert "no alias moved" in capsys.readouterr().out
        assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == "1"
        assert client.get_model_version(MODEL_NAME, "2").tags["source_md5"] == tags["source_md5"]
    finally:
        torch.set_num_threads(threads)


def test_portable_uri_writes_a_repo_store_relative_to_the_repo(tmp_path):
    """Committed outputs (train.json, registration.json) must not hold this machine's paths."""
    from spotdiff.tracking import portable_uri, tracking_uri

    inside = f"sqlite:///{(tmp_path / 'mlruns' / 'mlflow.db').resolve()}"
    assert portable_uri(inside, tmp_path) == "sqlite:///mlruns/mlflow.db"
    # the relative form is the one tracking_uri anchors back at the repo root
    (tmp_path / "params.yaml").write_text("mlflow:\n  tracking_uri: sqlite:///mlruns/mlflow.db\n")
    from spotdiff.params import load_params

    assert tracking_uri(load_params(tmp_path / "params.yaml"), root=tmp_path) == inside
    outside = f"sqlite:///{(tmp_path.parent / 'elsewhere.db').resolve()}"
    assert portable_uri(outside, tmp_path) == outside
    assert portable_uri("http://user:secret@host:5000", tmp_path) == "http://host:5000"
