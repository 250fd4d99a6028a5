"""The team stack's services, started natively for the tests (what deploy/compose.yaml runs in
containers): PostgreSQL from Debian's packages in a temp folder, moto's S3 server, `mlflow server` on
PostgreSQL with artifacts proxied to S3, and `prefect server start` on PostgreSQL. Every server listens
on 127.0.0.1 on a free port and is stopped by its PID; each start is timed (`Service.start_s`).

PostgreSQL is installed by `make team-services` (run by .ci/run); when it is missing, `postgres()`
installs it itself if it may (root, apt-get present, SPOTDIFF_NO_APT unset) and otherwise skips the
test with the reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import pytest

from helpers.env import VENV_BIN, subprocess_env
from helpers.http import free_port

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1"}
PG_USER = "spotdiff"
PG_DATABASES = ("mlflow", "prefect")


@dataclass
class Service:
    """One running service: its URL, when it became healthy, and how to stop it."""

    name: str
    url: str
    start_s: float
    pid: Optional[int] = None
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- PostgreSQL


def _pg_bindir() -> Optional[Path]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def ensure_postgres_installed() -> Path:
    """The folder holding initdb/pg_ctl; installs Debian's `postgresql` when missing and allowed,
    else skips the calling test with the reason."""
    bindir = _pg_bindir()
    if bindir:
        return bindir
    why = None
    if os.environ.get("SPOTDIFF_NO_APT"):
        why = "SPOTDIFF_NO_APT is set"
    elif os.geteuid() != 0:
        why = "not root (run `make team-services` as root, or `apt-get install postgresql`)"
    elif not shutil.which("apt-get"):
        why = "no apt-get on this machine"
    if why is None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        out = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
                             capture_output=True, text=True, env=env, timeout=600)
        if out.returncode != 0:  # a stale package list: refresh once
            subprocess.run(["apt-get", "update"], capture_output=True, timeout=300)
            out = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
                                 capture_output=True, text=True, env=env, timeout=600)
        bindir = _pg_bindir()
        if bindir:
            return bindir
        why = f"apt-get install postgresql failed: {(out.stderr or out.stdout).strip()[-300:]}"
    pytest.skip(f"PostgreSQL is not installed and cannot be installed here: {why}")


def _as_pg_owner(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as Debian's `postgres` user then."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@contextmanager
def postgres() -> Iterator[Service]:
    """A throw-away PostgreSQL cluster on 127.0.0.1 (trust auth, superuser `spotdiff`) with the
    databases `mlflow` and `prefect`; `url` is `postgresql://spotdiff@127.0.0.1:PORT` (add `/DB`)."""
    bindir = ensure_postgres_installed()
    if os.geteuid() == 0:
        try:
            import pwd

            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("PostgreSQL is installed but there is no `postgres` user to run it as")
    # Not under pytest's tmp folders: those are 0700 root, and the server runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="spotdiff-pg-"))
    base.chmod(0o755)
    data, sock = base / "data", base / "sock"
    data.mkdir()
    sock.mkdir()
    if os.geteuid() == 0:
        for path in (data, sock):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = free_port()
    t0 = time.monotonic()
    try:
        out = subprocess.run(_as_pg_owner([str(bindir / "initdb"), "-D", str(data), "-U", PG_USER,
                                           "--auth=trust", "-E", "UTF8", "--no-sync"]),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"initdb failed:\n{out.stdout}\n{out.stderr}"
        init_s = time.monotonic() - t0
        opts = (f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60")
        out = subprocess.run(_as_pg_owner([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts,
                                           "-l", str(sock / "server.log"), "-w", "-t", "60", "start"]),
                             capture_output=True, text=True, timeout=90)
        log = (sock / "server.log").read_text() if (sock / "server.log").exists() else ""
        assert out.returncode == 0, f"pg_ctl start failed:\n{out.stdout}\n{out.stderr}\n{log}"
        pid = int((data / "postmaster.pid").read_text().split()[0])
        url = f"postgresql://{PG_USER}@127.0.0.1:{port}"
        import psycopg

        with psycopg.connect(f"{url}/postgres", autocommit=True) as conn:
            for db in PG_DATABASES:
                conn.execute(f"CREATE DATABASE {db}")
        yield Service("postgresql", url, round(time.monotonic() - t0, 2), pid,
                      {"initdb_s": round(init_s, 2), "port": port, "bindir": str(bindir)})
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_pg_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                                         "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- S3 (moto)


@contextmanager
def s3_server(bucket: str) -> Iterator[Service]:
    """moto's S3 server on 127.0.0.1 with `bucket` created; `url` is the endpoint."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    t0 = time.monotonic()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        s3_client(url).create_bucket(Bucket=bucket)
        yield Service("s3", url, round(time.monotonic() - t0, 2), None, {"bucket": bucket})
    finally:
        server.stop()
        del boto3


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                        region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"])


def s3_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    client = s3_client(endpoint)
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


# ---------------------------------------------------------------- HTTP services (subprocesses)


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url}: the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{url}: not healthy after {timeout_s} s:\n{log.read_text()[-3000:]}")


def stop_process(proc: subprocess.Popen, timeout_s: float = 3) -> None:
    """SIGTERM the process group we started (the server and the workers it forked), then SIGKILL:
    the servers hold only throw-away state, and uvicorn waits for idle keep-alive connections."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@contextmanager
def background(cmd: list[str], env: dict, log: Path, health: str, timeout_s: float,
               name: str, url: str, cwd: Optional[Path] = None) -> Iterator[Service]:
    """Start `cmd` in its own process group, wait until `health` answers 200, stop it afterwards."""
    t0 = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=True)
    try:
        wait_healthy(health, proc, timeout_s, log)
        yield Service(name, url, round(time.monotonic() - t0, 2), proc.pid, {"log": str(log), "proc": proc})
    finally:
        stop_process(proc)


def mlflow_server(pg_url: str, s3: Service, folder: Path) -> contextlib.AbstractContextManager[Service]:
    """`mlflow server`: backend store on PostgreSQL (db `mlflow`), artifacts proxied to
    s3://BUCKET/mlflow (clients need no S3 credentials), one worker."""
    port = free_port()
    # No job-execution workers (MLflow 3's huey consumers, 7 processes, for GenAI jobs we do not use).
    env = subprocess_env(venv_on_path=True, MLFLOW_S3_ENDPOINT_URL=s3.url,
                         MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **S3_CREDENTIALS)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(key, None)
    cmd = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"{pg_url}/mlflow",
           "--artifacts-destination", f"s3://{s3.extra['bucket']}/mlflow", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    return background(cmd, env, folder / "mlflow-server.log", f"{url}/health", 180, "mlflow", url, folder)


def prefect_env(folder: Path, api_url: Optional[str] = None, pg_url: Optional[str] = None, **extra) -> dict:
    """Environment for Prefect processes: their own PREFECT_HOME, telemetry off, quick polling."""
    env = subprocess_env(venv_on_path=True, PREFECT_HOME=str(folder / "prefect-home"),
                         PREFECT_UI_ENABLED="false", PREFECT_SERVER_ANALYTICS_ENABLED="false",
                         PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5",
                         PREFECT_LOGGING_LEVEL="INFO", **extra)
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    if pg_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = pg_url.replace("postgresql://", "postgresql+asyncpg://",
                                                                    1) + "/prefect"
    return env


def prefect_server(pg_url: str, folder: Path) -> contextlib.AbstractContextManager[Service]:
    """`prefect server start` with its database on PostgreSQL (db `prefect`)."""
    port = free_port()
    env = prefect_env(folder, pg_url=pg_url)
    cmd = [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}/api"
    return background(cmd, env, folder / "prefect-server.log", f"{url}/health", 180, "prefect", url, folder)
