"""S3 storage on loopback (moto server): DVC push / fresh-clone pull and MLflow artifacts round-trip
byte-identical, and the test endpoint never lands in a committed config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.env import subprocess_env
from helpers.http import free_port

BUCKET = "spotdiff-test"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3(monkeypatch, telemetry_off) -> str:
    """A moto S3 server on 127.0.0.1 with one bucket; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()


def _run(cmd: list[str], cwd: Path) -> str:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=subprocess_env())
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def _dvc(*args: str, cwd: Path) -> str:
    return _run([sys.executable, "-m", "dvc", *args], cwd)


def _git(*args: str, cwd: Path) -> str:
    return _run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd)


def test_dvc_push_then_fresh_clone_pull_is_byte_identical(s3: str, tmp_path: Path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git("init", "-q", cwd=repo)
    _dvc("init", "-q", cwd=repo)
    _dvc("remote", "add", "-d", "storage", f"s3://{BUCKET}/dvc", cwd=repo)
    _dvc("remote", "modify", "--local", "storage", "endpointurl", s3, cwd=repo)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    (repo / "data").mkdir()
    (repo / "data" / "blob.bin").write_bytes(payload)
    (repo / "data" / "note.txt").write_text("spot the difference\n")
    _dvc("add", "data", cwd=repo)
    _git("add", "-A", cwd=repo)
    _git("commit", "-q", "-m", "data", cwd=repo)
    _dvc("push", cwd=repo)

    committed = (repo / ".dvc" / "config").read_text()
    assert f"s3://{BUCKET}/dvc" in committed
    assert "127.0.0.1" not in committed and "endpointurl" not in committed  # test endpoint stays local
    assert "testing" not in committed  # no credentials in the repo
    assert "127.0.0.1" in (repo / ".dvc" / "config.local").read_text()
    assert "config.local" in _git("check-ignore", "-v", ".dvc/config.local", cwd=repo)

    clone = tmp_path / "clone"
    _git("clone", "-q", str(repo), str(clone), cwd=tmp_path)
    assert not (clone / "data" / "blob.bin").exists()
    _dvc("remote", "modify", "--local", "storage", "endpointurl", s3, cwd=clone)
    _dvc("pull", cwd=clone)
    assert (clone / "data" / "blob.bin").read_bytes() == payload
    assert (clone / "data" / "note.txt").read_text() == "spot the difference\n"

    import boto3

    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3).list_objects_v2(
        Bucket=BUCKET, Prefix="dvc/")["Contents"]]
    assert keys and all(k.startswith("dvc/files/md5/") for k in keys)


def test_mlflow_artifacts_round_trip_through_s3(s3: str, tmp_path: Path, mlflow_repo: Path, monkeypatch):
    """In tmp_path's own store (`mlflow_repo`: cwd = tmp_path, mlflow's globals reset afterwards, so
    neither this store nor its env variable leaks into other tests)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from spotdiff.params import MlflowParams, Params
    from spotdiff.tracking import setup_mlflow

    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3)
    (tmp_path / "params.yaml").write_text("{}\n")
    params = Params(mlflow=MlflowParams(experiment="s3-exp", artifact_location=f"s3://{BUCKET}/mlflow"))
    exp_id = setup_mlflow(params)
    uri = mlflow.get_tracking_uri()
    assert uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    assert client.get_experiment(exp_id).artifact_location == f"s3://{BUCKET}/mlflow"

    payload = os.urandom(256 * 1024)
    src = tmp_path / "weights.bin"
    src.write_bytes(payload)
    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.log_artifact(str(src), artifact_path="ckpt")
    assert run.info.artifact_uri.startswith(f"s3://{BUCKET}/mlflow/")
    dest = tmp_path / "back"
    dest.mkdir()
    got = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="ckpt/weights.bin",
                                              dst_path=str(dest))
    assert Path(got).read_bytes() == payload

    import boto3

    objects = boto3.client("s3", endpoint_url=s3).list_objects_v2(Bucket=BUCKET, Prefix="mlflow/")
    assert any(o["Key"].endswith("ckpt/weights.bin") for o in objects["Contents"])
