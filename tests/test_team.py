"""The team stack (deploy/compose.yaml), its services started natively: PostgreSQL from Debian's
packages, moto's S3 server, `mlflow server` on PostgreSQL with artifacts proxied to S3, and
`prefect server` on PostgreSQL with a process work pool and `prefect worker start`.

- runs, metrics, artifacts and registered models land in PostgreSQL and S3, and come back;
- concurrent promotions keep one consistent champion (the promotion lock, on PostgreSQL and SQLite);
- a Prefect worker runs a deployment of the pipeline flow on tiny params against the stack, and its
  outputs go to the S3 DVC remote and come back in a fresh clone.

Skipped, with the reason, where PostgreSQL cannot be installed (`make team-services` installs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from helpers import team
from helpers.env import REPO_ROOT, subprocess_env

BUCKET = "spotdiff-team"
pytestmark = pytest.mark.usefixtures("telemetry_off")


# ---------------------------------------------------------------- the services (one set per module)


@pytest.fixture(scope="module")
def pg():
    with team.postgres() as service:
        yield service


@pytest.fixture(scope="module")
def s3():
    with team.s3_server(BUCKET) as service:
        yield service


@pytest.fixture(scope="module")
def stack_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("team-stack")


@pytest.fixture(scope="module")
def mlflow_server(pg, s3, stack_dir):
    with team.mlflow_server(pg.url, s3, stack_dir) as service:
        yield service


@pytest.fixture(scope="module")
def prefect_server(pg, stack_dir):
    with team.prefect_server(pg.url, stack_dir) as service:
        yield service


def _rows(pg, sql: str, *args) -> list[tuple]:
    import psycopg

    with psycopg.connect(f"{pg.url}/mlflow") as conn:
        return conn.execute(sql, args).fetchall()


# ---------------------------------------------------------------- tracking server round trip


def test_mlflow_server_keeps_runs_in_postgresql_and_artifacts_in_s3(mlflow_server, pg, s3, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    exp_id = client.create_experiment("round-trip")
    assert client.get_experiment(exp_id).artifact_location.startswith("mlflow-artifacts:")
    run_id = client.create_run(exp_id).info.run_id
    client.log_param(run_id, "train.lr", "0.0001")
    for step, loss in enumerate((0.9, 0.5, 0.25)):
        client.log_metric(run_id, "val/loss", loss, step=step)
    payload = os.urandom(384 * 1024 + 3)
    (tmp_path / "cyws.pt").write_bytes(payload)
    client.log_artifact(run_id, str(tmp_path / "cyws.pt"), "model")
    client.set_terminated(run_id)
    client.create_registered_model("round-trip")
    mv = client.create_model_version("round-trip", f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias("round-trip", "champion", mv.version)

    # What the server wrote is in PostgreSQL ...
    assert _rows(pg, "SELECT key, value, step FROM metrics WHERE run_uuid = %s ORDER BY step", run_id) == [
        ("val/loss", 0.9, 0), ("val/loss", 0.5, 1), ("val/loss", 0.25, 2)]
    assert _rows(pg, "SELECT value FROM params WHERE run_uuid = %s AND key = 'train.lr'", run_id) == [
        ("0.0001",)]
    assert _rows(pg, "SELECT alias, version FROM registered_model_aliases WHERE name = 'round-trip'") == [
        ("champion", int(mv.version))]
    # ... the file is an object in the S3 bucket, byte for byte ...
    keys = [k for k in team.s3_keys(s3.url, BUCKET, "mlflow/") if run_id in k and k.endswith("model/cyws.pt")]
    assert len(keys) == 1, team.s3_keys(s3.url, BUCKET)
    assert team.s3_client(s3.url).get_object(Bucket=BUCKET, Key=keys[0])["Body"].read() == payload
    # ... and comes back through the server (the client holds no S3 credentials).
    back = client.download_artifacts(run_id, "model/cyws.pt", str(tmp_path))
    assert Path(back).read_bytes() == payload
    assert client.get_model_version_by_alias("round-trip", "champion").version == mv.version


# ---------------------------------------------------------------- concurrent promotions

# One client process, serving requests from stdin (imported once, used by every race below): register
# a version with its metric, wait until every client of the race has, then the champion rule's
# read - decide - write (as register_version runs it) with a pause inside that makes every client read
# the champion before any writes it unless the promotion lock serialises them.
PROMOTER = textwrap.dedent("""\
    import contextlib, json, os, pathlib, sys, time
    from mlflow.tracking import MlflowClient
    from spotdiff.registry.concurrency import promotion_lock
    from spotdiff.registry.rule import CHAMPION, METRIC_TAG_PREFIX, champion_info, decide, tag_value

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        os.environ.pop("SPOTDIFF_REGISTRY_LOCK_URI", None)
        os.environ.update(job["env"])
        uri, name, value, barrier = job["uri"], job["name"], job["value"], pathlib.Path(job["barrier"])
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        for attempt in range(50):  # several clients may create the registered model at once
            try:
                client.create_registered_model(name)
            except Exception:
                pass
            try:
                mv = client.create_model_version(name, f"s3://bucket/models/{value}")
                break
            except Exception:
                time.sleep(0.1)
        client.set_model_version_tag(name, mv.version, METRIC_TAG_PREFIX + "ap", tag_value(value))
        (barrier / f"ready-{job['me']}").touch()  # start together
        while len(list(barrier.glob("ready-*"))) < job["clients"]:
            time.sleep(0.02)
        with promotion_lock(uri, name) if job["locked"] else contextlib.nullcontext():
            before = champion_info(client, name, "ap")
            time.sleep(1.0)
            promote, reason = decide(value, before, 0.0, 0.0, "ap")
            conflict = None
            if promote:
                try:
                    client.set_registered_model_alias(name, CHAMPION, mv.version)
                except Exception as exc:  # unlocked only: two alias inserts at once (another face of the race)
                    if job["locked"]:
                        raise
                    conflict = str(exc).splitlines()[0]
        print(json.dumps({"version": int(mv.version), "value": value, "promoted": promote,
                          "before": before and before["version"], "conflict": conflict}), flush=True)
    """)


@pytest.fixture(scope="module")
def promoters(tmp_path_factory):
    """Three client processes (the import of mlflow is paid once per module, not once per race)."""
    script = tmp_path_factory.mktemp("promoters") / "promoter.py"
    script.write_text(PROMOTER)
    procs = [subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=subprocess_env(drop=("SPOTDIFF_REGISTRY_LOCK_URI",)))
             for _ in range(3)]
    for proc in procs:
        assert json.loads(proc.stdout.readline()) == {"ready": True}
    yield procs
    for proc in procs:
        proc.stdin.close()
        proc.wait(30)


def _promote_concurrently(promoters, uri: str, name: str, values: list[float], locked: bool, tmp_path: Path,
                          **env: str) -> list[dict]:
    barrier = tmp_path / f"barrier-{name}"
    barrier.mkdir()
    for i, value in enumerate(values):
        job = {"uri": uri, "name": name, "value": value, "barrier": str(barrier), "me": i,
               "clients": len(values), "locked": locked, "env": env}
        promoters[i].stdin.write(json.dumps(job) + "\n")
        promoters[i].stdin.flush()
    results = []
    for proc in promoters[:len(values)]:
        line = proc.stdout.readline()
        assert line, f"a client process died (exit {proc.poll()})"
        results.append(json.loads(line))
    return results


def _champion(uri: str, name: str) -> tuple[int, float]:
    from mlflow.tracking import MlflowClient

    mv = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(name, "champion")
    return int(mv.version), float(mv.tags["metric.ap"])


@pytest.mark.slow
@pytest.mark.parametrize("store", ["server+postgresql-lock", "postgresql", "sqlite"])
def test_concurrent_promotions_keep_the_best_model_champion(store, promoters, mlflow_server, pg, tmp_path):
    values = [0.41, 0.62, 0.55]
    env = {}
    if store == "server+postgresql-lock":  # runners talk to the server; the lock is its backend store
        uri = mlflow_server.url
        env["SPOTDIFF_REGISTRY_LOCK_URI"] = f"{pg.url}/mlflow"
    elif store == "postgresql":  # the registry is the database itself: its own lock
        uri = f"{pg.url}/mlflow"
    else:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=uri).search_experiments()  # create the schema once, not racing
    name = f"race-{store}"
    results = _promote_concurrently(promoters, uri, name, values, True, tmp_path, **env)
    best = max(results, key=lambda r: r["value"])
    assert _champion(uri, name) == (best["version"], best["value"])
    # Serialised: every client after the first compared against the champion the one before it left.
    assert sorted(r["before"] is None for r in results) == [False, False, True]
    assert all(r["promoted"] == (r["before"] is None or r["value"] > dict(
        (x["version"], x["value"]) for x in results)[r["before"]]) for r in results)


@pytest.mark.slow
def test_without_the_lock_both_clients_promote_on_a_stale_read(promoters, mlflow_server, tmp_path):
    """The control: the same clients with no lock both read "no champion" and both move it (the last
    writer wins, whichever model it holds), so the test above can fail; if this one stops seeing the
    stale read, the pause no longer makes a race."""
    results = _promote_concurrently(promoters, mlflow_server.url, "race-unlocked", [0.62, 0.41], False,
                                    tmp_path)
    assert all(r["before"] is None and r["promoted"] for r in results)  # both saw no champion
    # Both then moved the alias; or the second's insert collided with the first's in the store.


def test_lock_uri_comes_from_the_environment_or_a_database_registry(monkeypatch, tmp_path):
    from spotdiff.errors import SpotdiffError
    from spotdiff.registry.concurrency import lock_key, lock_uri, promotion_lock

    monkeypatch.delenv("SPOTDIFF_REGISTRY_LOCK_URI", raising=False)
    assert lock_uri("postgresql+psycopg://u@h:5432/mlflow") == "postgresql+psycopg://u@h:5432/mlflow"
    local = f"sqlite:///{tmp_path / 'x.db'}"
    assert lock_uri(local) == local
    assert lock_uri("http://mlflow:5000") is None
    monkeypatch.setenv("SPOTDIFF_REGISTRY_LOCK_URI", "postgresql://u@db/mlflow")
    assert lock_uri("http://mlflow:5000") == "postgresql://u@db/mlflow"
    assert lock_key("spotdiff") == lock_key("spotdiff") != lock_key("other")
    monkeypatch.setenv("SPOTDIFF_REGISTRY_LOCK_URI", "mysql://u:secret@db/mlflow")
    with pytest.raises(SpotdiffError, match="SPOTDIFF_REGISTRY_LOCK_URI=mysql://db/mlflow: not a database"):
        with promotion_lock("http://mlflow:5000", "m"):
            pass


def test_an_unreachable_lock_database_is_a_one_line_error(monkeypatch):
    from helpers.http import free_port
    from spotdiff.errors import SpotdiffError
    from spotdiff.registry.concurrency import promotion_lock

    monkeypatch.setenv("SPOTDIFF_REGISTRY_LOCK_URI", f"postgresql://u:pw@127.0.0.1:{free_port()}/mlflow")
    with pytest.raises(SpotdiffError) as err:
        with promotion_lock("http://mlflow:5000", "m"):
            pass
    assert "cannot connect" in str(err.value) and "pw" not in str(err.value)
    assert len(str(err.value).splitlines()) == 1


# ---------------------------------------------------------------- the pipeline through a Prefect worker

TINY_OVERRIDES = {
    "data.num_images": 8, "data.image_width": 128, "data.image_height": 96, "data.max_objects": 3,
    "inpaint.max_versions": 2, "pairs.pairs_per_image": 1, "pairs.val_fraction": 0.25,
    "pairs.preview_count": 2, "model.image_size": 64, "train.max_epochs": 1, "train.batch_size": 4,
    "train.max_steps": -1, "train.val_every_n_steps": 0, "train.warmup_steps": 0,
    "train.affine_start_step": 0, "train.affine_ramp_steps": 0, "register.ap_floor": 0.0,
    "train.preview_pairs": 2, "testsets.pairs_per_set": 2, "testsets.image_size": 128,
    "evaluate.samples_to_draw": 1, "register.model_name": "team-pipeline",
}

DEPLOY = textwrap.dedent("""\
    import json, sys
    from prefect import flow
    project, pool, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    deployment = flow.from_source(source=project, entrypoint="flows/pipeline.py:spotdiff_pipeline")
    print(deployment.deploy(name="team", work_pool_name=pool, parameters=params, build=False, push=False))
    """)


def _sh(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    env = env or subprocess_env(drop=("MLFLOW_TRACKING_URI",), **team.S3_CREDENTIALS)
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=540)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def _project(root: Path, s3) -> Path:
    """This repository's pipeline and flow in a fresh git + DVC repo whose default remote is
    s3://BUCKET/dvc (the endpoint in .dvc/config.local only)."""
    repo = root / "project"
    repo.mkdir()
    shutil.copy(REPO_ROOT / "dvc.yaml", repo / "dvc.yaml")
    # The tiny profile committed as the project's params: a deployment run without overrides runs
    # `dvc repro` in this workspace (with overrides it would be a DVC experiment in DVC's own copy).
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for key, value in TINY_OVERRIDES.items():
        section, name = key.split(".")
        raw[section][name] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for folder in ("src", "flows"):
        shutil.copytree(REPO_ROOT / folder, repo / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    _sh(["git", "init", "-q"], repo)
    _sh([sys.executable, "-m", "dvc", "init", "-q"], repo)
    _sh([sys.executable, "-m", "dvc", "remote", "add", "-d", "team", f"s3://{BUCKET}/dvc"], repo)
    _sh([sys.executable, "-m", "dvc", "remote", "modify", "--local", "team", "endpointurl", s3.url], repo)
    _sh(["git", "add", "-A"], repo)
    _sh([*git, "commit", "-q", "-m", "project"], repo)
    return repo


@pytest.mark.slow
def test_a_prefect_worker_runs_the_pipeline_deployment_against_the_team_stack(
        prefect_server, mlflow_server, pg, s3, stack_dir, tmp_path):
    repo = _project(tmp_path, s3)
    env = team.prefect_env(stack_dir, api_url=prefect_server.url, MLFLOW_TRACKING_URI=mlflow_server.url,
                           SPOTDIFF_REGISTRY_LOCK_URI=f"{pg.url}/mlflow", **team.S3_CREDENTIALS)
    env.pop("MLFLOW_REGISTRY_URI", None)
    _sh([str(team.VENV_BIN / "prefect"), "work-pool", "create", "team-gpu", "--type", "process"], repo, env)
    params = {"repo": str(repo), "retry_delay_seconds": 0}
    (tmp_path / "deploy.py").write_text(DEPLOY)
    _sh([sys.executable, str(tmp_path / "deploy.py"), str(repo), "team-gpu", json.dumps(params)], repo, env)

    log = tmp_path / "worker.log"
    with open(log, "w") as fh:
        worker = subprocess.Popen([str(team.VENV_BIN / "prefect"), "worker", "start", "--pool", "team-gpu",
                                   "--type", "process", "--limit", "1"], env=env, cwd=tmp_path,
                                  stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.monotonic()
        out = _sh([str(team.VENV_BIN / "prefect"), "deployment", "run", "spotdiff-pipeline/team", "--watch",
                   "--watch-timeout", "480"], repo, env)
        seconds = time.monotonic() - t0
    finally:
        team.stop_process(worker)
    worker_log = log.read_text()
    assert "Completed" in out, out + worker_log[-4000:]
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    assert flow_run_id in worker_log, worker_log[-4000:]  # this worker, on this pool, ran it
    assert "Finished in state Completed()" in worker_log
    print(f"flow run through the worker: {seconds:.1f} s")

    # The run's record, the registry and the artifacts are on the team's services, not in the repo.
    reg = json.loads((repo / "registry/registration.json").read_text())
    assert reg["decision"] == "promoted" and reg["model_name"] == "team-pipeline"
    assert _rows(pg, "SELECT version FROM registered_model_aliases WHERE name = 'team-pipeline' "
                     "AND alias = 'champion'") == [(reg["version"],)]
    run_id = json.loads((repo / "models/train_run.json").read_text())["mlflow_run_id"]
    assert _rows(pg, "SELECT count(*) FROM metrics WHERE run_uuid = %s AND key LIKE 'cyws/%%'",
                 run_id)[0][0] > 0
    keys = team.s3_keys(s3.url, BUCKET, "mlflow/")
    assert any(k.endswith("/MLmodel") for k in keys), keys[:20]  # the registered pyfunc model
    assert not (repo / "mlruns").exists()

    # dvc push to the S3 remote; a fresh clone pulls the same model bytes.
    _sh([sys.executable, "-m", "dvc", "push"], repo)
    assert team.s3_keys(s3.url, BUCKET, "dvc/files/md5/")
    _sh(["git", "add", "-A"], repo)
    _sh(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q", "-m", "retrain"], repo)
    clone = tmp_path / "clone"
    _sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    _sh([sys.executable, "-m", "dvc", "remote", "modify", "--local", "team", "endpointurl", s3.url], clone)
    _sh([sys.executable, "-m", "dvc", "pull", "models/cyws.pt", "eval/metrics.json"], clone)
    assert (clone / "models/cyws.pt").read_bytes() == (repo / "models/cyws.pt").read_bytes()
    assert json.loads((clone / "eval/metrics.json").read_text()) == json.loads(
        (repo / "eval/metrics.json").read_text())
