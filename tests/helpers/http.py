"""Local network helpers: a folder served over HTTP on 127.0.0.1 (with Range requests, as the COCO and
CYWS servers have), a free port, and the digests downloads are checked against."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def md5_of(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


class RangeRequestHandler(http.server.SimpleHTTPRequestHandler):
    """Static files, quiet, with `Range: bytes=N-` answered by 206 (or 416 past the end); every GET is
    recorded as (path, Range header or None) in the server's `requests` list."""

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Range")))
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not rng or not path.is_file():
            return super().do_GET()
        data = path.read_bytes()
        start = int(rng.split("=")[1].split("-")[0])
        if start >= len(data):
            self.send_error(416)
            return None
        body = data[start:]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return None


@dataclass
class LocalServer:
    root: Path  # the folder served
    url: str  # http://127.0.0.1:PORT, no trailing slash
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range) per GET


@contextmanager
def serve_folder(root: Path) -> Iterator[LocalServer]:
    """Serve `root` on 127.0.0.1 (a free port) from a background thread until the block ends."""
    handler = functools.partial(RangeRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield LocalServer(Path(root), f"http://127.0.0.1:{server.server_address[1]}", server.requests)
    finally:
        server.shutdown()
        server.server_close()
