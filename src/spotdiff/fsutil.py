"""Atomic file and folder writes: nothing half-written is ever left where a rerun would trust it.

Files are written to a temporary sibling and renamed into place; whole output folders are built in
a temporary sibling folder and swapped in with one rename at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it onto `path`, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get ordinary permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def torch_save_atomic(path: str | Path, obj: Any) -> None:
    """`torch.save` to `path` atomically, with the same bytes for the same object.

    (Saved straight to a file, torch names the archive after the file, here a random temp name.)
    """
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a folder in a temporary sibling and swap it onto `path` only when the block succeeds.

    A killed run leaves at most a `.<name>.partial-*` sibling, never a half-filled `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; the output folder gets ordinary permissions
    try:
        yield tmp
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_paths(paths: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """All or nothing for several files: yield {key: temporary sibling}; when the block succeeds,
    rename every one into place, else (or if a rename fails) delete the temporaries and whatever was
    already renamed. Folders this created for them are removed again on failure."""
    created: list[Path] = []
    for p in paths.values():
        missing = [q for q in [Path(p).parent, *Path(p).parent.parents] if not q.exists()]
        for q in reversed(missing):
            q.mkdir()
            created.append(q)
    tmps: dict[str, Path] = {}
    done: list[Path] = []
    try:
        for key, p in paths.items():
            p = Path(p)
            fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp" + p.suffix, dir=p.parent)
            os.close(fd)
            os.chmod(tmp, 0o666 & ~_UMASK)
            tmps[key] = Path(tmp)
        yield tmps
        for key, p in paths.items():
            os.replace(tmps[key], p)
            done.append(Path(p))
    except BaseException:
        for p in [*done, *tmps.values()]:
            with contextlib.suppress(OSError):
                Path(p).unlink()
        for q in reversed(created):
            with contextlib.suppress(OSError):
                q.rmdir()  # only when still empty
        raise


@contextlib.contextmanager
def removed_if_failed(path: str | Path) -> Iterator[Path]:
    """A stage's output folder: when the block fails and the folder did not exist before, remove it
    if it is still empty (a failed run never leaves an empty --out behind)."""
    path = Path(path)
    existed = path.exists()
    try:
        yield path
    except BaseException:
        if not existed and path.is_dir():
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


def file_digest(path: str | Path, algorithm: str = "md5") -> str:
    """Hex digest of a file's bytes (md5 by default: what DVC records for a file output)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def exclusive_lock(path: str | Path, wait_s: float, timed_out: Callable[[], BaseException],
                   poll_s: float = 0.2, mode: str = "a") -> Iterator[IO[str]]:
    """Hold an exclusive `flock` on `path` (created, its folder too), polling every `poll_s` for up
    to `wait_s` seconds; raise `timed_out()` when another process still holds it. Yields the open
    file (e.g. to write the holder's pid)."""
    import fcntl
    import time

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as fh:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise timed_out() from None
                time.sleep(poll_s)
        try:
            yield fh
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
