"""`spotdiff serve` for the tests: a real server subprocess on 127.0.0.1, stopped by its PID; uploads
as PNG bytes; a multipart POST with nothing but the standard library."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helpers.env import SPOTDIFF, subprocess_env
from helpers.http import free_port


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def post_detect(url: str, files: dict[str, tuple[str, bytes]], timeout: float = 120, **fields: str
                ) -> tuple[int, dict]:
    """POST /v1/detect → (status, JSON body)."""
    body, ctype = multipart(fields, files)
    req = urllib.request.Request(url + "/v1/detect", data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@contextmanager
def running_server(args: list[str], cwd: Path, startup_s: float = 120) -> Iterator[Server]:
    """`spotdiff serve --port FREE ARGS` in `cwd`, waited for on /healthz; stopped (SIGINT, then
    SIGKILL) by its PID when the block ends."""
    port = free_port()
    log = Path(cwd) / f"serve-{port}.log"
    env = subprocess_env(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(SPOTDIFF), "serve", "--host", "127.0.0.1", "--port", str(port), *args],
                                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"spotdiff serve exited {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if server.get_json("/healthz")["status"] == "ok":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"spotdiff serve not healthy after {startup_s} s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield server
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
