"""One registration or promotion at a time per registered model, across processes and machines.

Registering is look up - create - decide: find a version made from the same model file (so one file
is registered once), create the version, then read the current champion's metric, apply the champion
rule and set the alias. MLflow sets an alias atomically but has no compare-and-set, so two clients
that register at once could both make a version of one file, or both read the same champion and let
the later write win even when it is the worse model. `promotion_lock(registry_uri, model_name)` makes
a whole registration (`spotdiff.registry.versions.register_version`) and a hand promotion
(`promote_version`) one critical section, held with the registry database's own locking; it is the
only lock around the registry:

- PostgreSQL (`postgresql://…`, any `+driver`): a session advisory lock, `pg_advisory_lock(key)` with
  `key` derived from the model name, on a connection of its own. It needs no table privileges (a
  role with CONNECT is enough), is released when the holder's connection ends (a crashed client
  cannot leave it taken) and waits at most `timeout_s`.
- SQLite (`sqlite:///path`): an exclusive `flock` on `path.spotdiff-registry.lock` beside the file,
  which every process on the machine sharing that store sees.

Which database: env `SPOTDIFF_REGISTRY_LOCK_URI` when set (a team whose runners talk to an MLflow
tracking *server* points it at the server's PostgreSQL backend store), else the registry URI itself
when it is a database. A server URI with no lock URI gets no lock across machines, and one warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
from pathlib import Path
from typing import Iterator, Optional

from spotdiff.errors import SpotdiffError
from spotdiff.fsutil import exclusive_lock
from spotdiff.tracking import redact_uri

LOCK_ENV = "SPOTDIFF_REGISTRY_LOCK_URI"
DEFAULT_TIMEOUT_S = 600.0
_IN_PROCESS = threading.Lock()  # threads of one process (the flock below is per open file)
_warned: set[str] = set()


def lock_key(model_name: str) -> int:
    """The signed 64-bit advisory-lock key of `model_name` (same in every process and language)."""
    digest = hashlib.sha256(f"spotdiff-registry:{model_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_uri(registry_uri: str) -> Optional[str]:
    """The database whose lock serialises promotions: env SPOTDIFF_REGISTRY_LOCK_URI, else the
    registry URI when it is PostgreSQL or SQLite, else None (a tracking server without a lock URI)."""
    env = os.environ.get(LOCK_ENV, "").strip()
    if env:
        return env
    scheme = registry_uri.split(":", 1)[0].split("+", 1)[0].lower()
    return registry_uri if scheme in ("postgresql", "postgres", "sqlite") else None


@contextlib.contextmanager
def promotion_lock(registry_uri: str, model_name: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[str]:
    """Hold the promotion lock of `model_name`; yields how it is held ("postgresql advisory lock",
    "file lock", or "none")."""
    uri = lock_uri(registry_uri)
    with _IN_PROCESS:
        if uri is None:
            if registry_uri not in _warned:
                _warned.add(registry_uri)
                print(f"warning: registry {redact_uri(registry_uri)}: promotions from several machines are "
                      f"not serialised; set {LOCK_ENV} to the tracking server's PostgreSQL backend store",
                      file=sys.stderr)
            yield "none"
            return
        scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
        if scheme in ("postgresql", "postgres"):
            with _postgres_lock(uri, model_name, timeout_s):
                yield "postgresql advisory lock"
        elif scheme == "sqlite":
            with _file_lock(uri, model_name, timeout_s):
                yield "file lock"
        else:
            raise SpotdiffError(f"{LOCK_ENV}={redact_uri(uri)}: not a database this lock can use; give "
                                "the registry's PostgreSQL store (postgresql://user@host:port/db) or a "
                                "sqlite:/// path")


@contextlib.contextmanager
def _postgres_lock(uri: str, model_name: str, timeout_s: float) -> Iterator[None]:
    import psycopg

    conninfo = "postgresql:" + uri.split(":", 1)[1]  # a libpq URI: SQLAlchemy's +driver part goes
    try:
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=30)
    except psycopg.Error as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpotdiffError(f"registry lock {redact_uri(uri)}: cannot connect ({why}); "
                            f"check {LOCK_ENV} / MLFLOW_TRACKING_URI") from None
    try:
        conn.execute(f"SET lock_timeout = {int(timeout_s * 1000)}")
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (lock_key(model_name),))
        except psycopg.errors.LockNotAvailable:
            raise SpotdiffError(f"model {model_name}: another client held the promotion lock for more than "
                                f"{timeout_s:.0f} s; retry when its registration has finished") from None
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key(model_name),))
    finally:
        conn.close()


@contextlib.contextmanager
def _file_lock(uri: str, model_name: str, timeout_s: float) -> Iterator[None]:
    db = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else Path(uri.split(":", 1)[1])
    path = db.with_name(f"{db.name}.spotdiff-registry.lock")

    def timed_out() -> SpotdiffError:
        return SpotdiffError(f"model {model_name}: another process held the promotion lock ({path}) for "
                             f"more than {timeout_s:.0f} s; retry when it has finished")

    with exclusive_lock(path, timeout_s, timed_out, poll_s=0.05):
        yield
