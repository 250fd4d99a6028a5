"""MLflow set-up in one place: where runs, artifacts and registered models go, and who may log.

Tracking URI: env `MLFLOW_TRACKING_URI` wins, then `params.mlflow.tracking_uri`, else a SQLite store
at `<repo root>/mlruns/mlflow.db` (absolute path, so every stage and `mlflow ui` see the same store
whatever their working folder). Artifacts: `params.mlflow.artifact_location` (a local folder, a
`file:` URI or `s3://bucket/prefix` — with `MLFLOW_S3_ENDPOINT_URL` and the usual AWS env variables
for an S3-compatible server) or `<repo root>/mlruns/artifacts` by default. The repo root is the
nearest folder, walking up from the working folder, that holds `params.yaml` or `dvc.yaml` — and,
inside a DVC experiment's temporary copy (`<project>/.dvc/tmp/exps/...`), `<project>`: one store
whether a stage runs in the workspace, in `dvc exp run --temp` / `--queue`, or in a fresh clone.
Committed files never hold the store's machine path (`portable_uri`).

Store failures (a locked SQLite file, a server gone) become one SpotdiffError line (`store_errors`);
runs a killed stage left RUNNING are marked KILLED by the next `setup_mlflow` (`sweep_dead_runs`).

Only rank 0 of a distributed run talks to MLflow: check `is_rank_zero()` first.
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional
from urllib.parse import urlsplit, urlunsplit

from spotdiff.errors import SpotdiffError
from spotdiff.params import load_params

MARKERS = ("params.yaml", "dvc.yaml")


EXPS_PARTS = (".dvc", "tmp", "exps")


def project_of_experiment(folder: Path) -> Optional[Path]:
    """The project a DVC temp/queued experiment folder belongs to: for `<project>/.dvc/tmp/exps/...`,
    `<project>` (env DVC_ROOT, which DVC sets to it for these runs, when it agrees); else None."""
    parts = folder.parts
    for i in range(len(parts) - len(EXPS_PARTS) + 1):
        if parts[i:i + len(EXPS_PARTS)] == EXPS_PARTS:
            project = Path(*parts[:i])
            env_root = os.environ.get("DVC_ROOT", "").strip()
            if env_root and Path(env_root).resolve() == project:
                return Path(env_root).resolve()
            return project
    return None


def find_repo_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding params.yaml or dvc.yaml; inside a
    DVC experiment's temporary copy (`.dvc/tmp/exps/...`, `dvc exp run --temp` or `--queue`), the
    project that copy came from, so runs land in the project's one store, not in a folder DVC deletes.

    Falls back to `start` itself when no ancestor has either (e.g. a bare working folder).
    """
    here = Path(start or Path.cwd()).resolve()
    project = project_of_experiment(here)
    if project is not None and any((project / m).is_file() for m in MARKERS):
        return project
    for folder in (here, *here.parents):
        if any((folder / m).is_file() for m in MARKERS):
            return folder
    return here


def _mlflow_section(params: Any) -> Any:
    return getattr(params, "mlflow", None) if params is not None else None


def tracking_uri(params: Any = None, root: str | Path | None = None, create: bool = True) -> str:
    """The tracking (and registry) URI for this repo; creates the default SQLite folder if needed
    (`create=False`: only names it)."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    section = _mlflow_section(params)
    configured = (getattr(section, "tracking_uri", "") or "").strip()
    if configured:
        if configured.startswith("sqlite:///") and not configured.startswith("sqlite:////"):
            # A relative SQLite path would depend on the working folder: anchor it at the repo root.
            rel = configured[len("sqlite:///"):]
            db = (Path(root) if root else find_repo_root()) / rel
            if create:
                db.parent.mkdir(parents=True, exist_ok=True)
            return f"sqlite:///{db.resolve()}"
        return configured
    folder = (Path(root) if root else find_repo_root()) / "mlruns"
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'mlflow.db').resolve()}"


def registry_uri(tracking: str) -> str:
    """The model registry's URI: env MLFLOW_REGISTRY_URI, else the tracking store itself."""
    return os.environ.get("MLFLOW_REGISTRY_URI", "").strip() or tracking


def local_store_path(uri: str) -> Optional[Path]:
    """The file or folder behind a SQLite / file URI or a plain path (None for servers and databases)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    parts = urlsplit(uri)
    if parts.scheme == "file":
        from urllib.request import url2pathname

        return Path(url2pathname(parts.path))
    if parts.scheme == "" and uri:
        return Path(uri)
    return None


def existing_store(root: str | Path | None = None) -> tuple[str, Optional[str]]:
    """For reading only: (tracking URI, the local store path when it does not exist, else None).

    The URI is the one `setup_mlflow` would use (env, then the repo's params.yaml `mlflow` section,
    then `<repo root>/mlruns/mlflow.db`), but nothing is created — no folder, no SQLite file — so a
    lookup from any working folder leaves no trace. Servers are assumed to exist.
    """
    root = Path(root) if root else find_repo_root()
    params = None
    if not os.environ.get("MLFLOW_TRACKING_URI", "").strip() and (root / "params.yaml").is_file():
        try:
            params = load_params(root / "params.yaml")
        except SpotdiffError:
            params = None  # a broken params file is reported by whatever reads it for real
    uri = tracking_uri(params, root, create=False)
    local = local_store_path(uri)
    return uri, (str(local) if local is not None and not local.exists() else None)


def artifact_location(params: Any = None, root: str | Path | None = None) -> str:
    """Artifact root for new experiments: a file URI under the repo by default, or s3://… when set."""
    section = _mlflow_section(params)
    configured = (getattr(section, "artifact_location", "") or "").strip()
    base = Path(root) if root else find_repo_root()
    if configured:
        if "://" in configured or configured.startswith("file:"):
            return configured
        path = Path(configured)
        path = path if path.is_absolute() else base / path
        path.mkdir(parents=True, exist_ok=True)
        return path.resolve().as_uri()
    path = base / "mlruns" / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve().as_uri()


def _new_experiment_artifacts(uri: str, params: Any, root: str | Path | None) -> Optional[str]:
    """A new experiment's artifact root: the configured one; else, on a tracking server, None (the
    server's own default, e.g. `mlflow-artifacts:/` proxied to its S3 bucket, so every client's
    artifacts land in one place); else the local default under the repo."""
    section = _mlflow_section(params)
    configured = (getattr(section, "artifact_location", "") or "").strip()
    if not configured and urlsplit(uri).scheme in ("http", "https"):
        return None
    return artifact_location(params, root)


def portable_uri(uri: str, root: str | Path | None = None) -> str:
    """The tracking URI as written into committed outputs: redacted, and a SQLite store inside the
    repository given relative to it (`sqlite:///mlruns/mlflow.db`, the form `tracking_uri` anchors at
    the repo root), so outputs do not depend on where the repository was cloned."""
    uri = redact_uri(uri)
    if uri.startswith("sqlite:///"):
        base = (Path(root) if root else find_repo_root()).resolve()
        try:
            return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve().relative_to(base).as_posix()}"
        except ValueError:  # a store outside the repository: its own absolute path
            return uri
    return uri


def redact_uri(uri: str) -> str:
    """A URI safe to print or write into outputs: any user:password part is dropped."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return uri


def setup_mlflow(params: Any = None, root: str | Path | None = None) -> str:
    """Point MLflow at this repo's store, make sure the experiment exists, select it; return its id.

    The model registry follows the tracking URI (unless MLFLOW_REGISTRY_URI says otherwise).

    A new experiment is created with `artifact_location(params)` (on a tracking server with none
    configured: the server's default artifact root); an existing one keeps its own.
    A deleted experiment of the same name is restored. Runs a killed stage left RUNNING are marked
    KILLED (`sweep_dead_runs`).
    """
    import mlflow
    from mlflow.entities import LifecycleStage
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(params, root)
    mlflow.set_tracking_uri(uri)  # (MLflow also exports it as MLFLOW_TRACKING_URI to subprocesses)
    section = _mlflow_section(params)
    name = getattr(section, "experiment", "") or "spotdiff"
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # (opens a SQLite store: may be locked)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            exp_id = client.create_experiment(
                name, artifact_location=_new_experiment_artifacts(uri, params, root))
        else:
            exp_id = exp.experiment_id
            if exp.lifecycle_stage == LifecycleStage.DELETED:
                client.restore_experiment(exp_id)
    except SpotdiffError:
        raise
    except Exception as exc:  # connection refused, bad URI, locked DB, …
        if any(w in str(exc).lower() for w in LOCK_WORDS):
            raise SpotdiffError(
                f"MLflow store {redact_uri(uri)} is locked by another process; nothing was changed — wait "
                "for the other process (or close it) and rerun") from None
        raise SpotdiffError(
            f"MLflow tracking store {redact_uri(uri)}: cannot open it ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); check MLFLOW_TRACKING_URI / "
            "params.yaml mlflow.tracking_uri") from None
    mlflow.set_experiment(experiment_id=exp_id)
    with store_errors(uri, "marking killed runs"):
        sweep_dead_runs(client, exp_id)
    return exp_id


def is_rank_zero() -> bool:
    """True unless env RANK or LOCAL_RANK names a non-zero rank (DDP launches set them)."""
    for var in ("RANK", "LOCAL_RANK"):
        value: Optional[str] = os.environ.get(var)
        if value not in (None, "") and value.strip() != "0":
            return False
    return True


def recorded_run(run_info: Path, model_md5: Optional[str], consequence: str, fix: str,
                 warn: Callable[[str], None]) -> Optional[str]:
    """The MLflow run id the train stage recorded in `run_info` (`train_run.json`), or None with one
    warning line ending in `consequence` when there is none to trust: no file (training restored
    from DVC's cache), no run id (trained without tracking), or a record of another model than the
    one with `model_md5` (None: not checked). Invalid JSON is a SpotdiffError ending in `fix`."""
    if not run_info.is_file():
        warn(f"warning: {run_info} not found (training restored from DVC's cache?); {consequence}")
        return None
    try:
        info = json.loads(run_info.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpotdiffError(f"{run_info}: not valid JSON ({exc}); {fix}") from None
    run_id = info.get("mlflow_run_id") if isinstance(info, dict) else None
    if not run_id:
        warn(f"warning: {run_info}: no mlflow_run_id (trained without tracking); {consequence}")
        return None
    recorded = info.get("model_md5")
    if recorded and model_md5 and recorded != model_md5:
        warn(f"warning: {run_info} describes another model (md5 {recorded}, not {model_md5}); {consequence}")
        return None
    return str(run_id)


LOCK_WORDS = ("database is locked", "database table is locked", "lock timeout", "could not obtain lock")


@contextmanager
def store_errors(uri: str, action: str) -> Iterator[None]:
    """Turn a tracking store failure met while doing `action` into one SpotdiffError line: a locked
    SQLite database (another process holds it), a server that went away, a broken database."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except SpotdiffError:
        raise
    except Exception as exc:  # MlflowException, sqlalchemy.exc.OperationalError, requests' errors…
        text = str(exc)
        first = text.splitlines()[0] if text else type(exc).__name__
        if any(w in text.lower() for w in LOCK_WORDS):
            raise SpotdiffError(
                f"MLflow store {redact_uri(uri)} is locked by another process while {action}; nothing "
                "was changed by this step — wait for the other process (or close it) and rerun") from None
        if isinstance(exc, MlflowException) or type(exc).__module__.startswith(("sqlalchemy", "requests")):
            raise SpotdiffError(f"MLflow store {redact_uri(uri)}: {action} failed ({type(exc).__name__}: "
                                f"{first[:300]}); check the store and rerun") from None
        raise


PID_TAG, HOST_TAG = "spotdiff.pid", "spotdiff.host"
# env set by `dvc exp run` -> the MLflow tag linking a run to its DVC experiment
# and, for a run of the Prefect flow, its MLflow run as the parent (flows/pipeline.py sets the variable)
DVC_EXP_TAGS = {"DVC_EXP_NAME": "spotdiff.dvc_experiment",
                "DVC_EXP_BASELINE_REV": "spotdiff.dvc_baseline_rev",
                "SPOTDIFF_PARENT_RUN_ID": "mlflow.parentRunId"}


def mark_owner(client: Any, run_id: str) -> None:
    """Tag `run_id` with this process and host, so a later sweep can tell it was killed."""
    client.set_tag(run_id, PID_TAG, str(os.getpid()))
    client.set_tag(run_id, HOST_TAG, socket.gethostname())


def _alive(pid: int, started_ms: Optional[int]) -> bool:
    try:
        import psutil

        proc = psutil.Process(pid)
        # a pid reused by a later process is not the run's owner
        return not (started_ms and proc.create_time() * 1000 > started_ms + 1000)
    except ImportError:  # pragma: no cover - psutil is a dependency
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
    except Exception:  # NoSuchProcess, AccessDenied on a foreign pid
        return False


def sweep_dead_runs(client: Any, experiment_id: str) -> list[str]:
    """Runs of this experiment still RUNNING whose owning process (on this host) is gone — a killed
    stage — are marked KILLED; returns their ids."""
    host = socket.gethostname()
    swept = []
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'",
                              max_results=200)
    for run in runs:
        tags = run.data.tags
        pid = tags.get(PID_TAG)
        if tags.get(HOST_TAG) != host or not (pid or "").isdigit():
            continue
        if int(pid) == os.getpid() or _alive(int(pid), run.info.start_time):
            continue
        client.set_terminated(run.info.run_id, status="KILLED")
        swept.append(run.info.run_id)
    return swept
