"""`spotdiff serve` as a real process on 127.0.0.1: 50 concurrent POST /v1/detect all answered, the
server's memory flat; a bad --model stops it from starting with one line and exit code 2.
(Latency figures: benchmarks/bench_serve.py.)"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from helpers.env import SPOTDIFF, subprocess_env
from helpers.images import astronaut_pair
from helpers.serve import png_bytes, post_detect, running_server


def test_bad_model_one_line_exit_2(tmp_path):
    r = subprocess.run([str(SPOTDIFF), "serve", "--port", "0", "--model", str(tmp_path / "nope.pt")],
                       cwd=tmp_path, env=subprocess_env(PYTHONWARNINGS="ignore"), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spotdiff: error: ") and "nope.pt" in lines[0]


def test_bad_limits_one_line_exit_2(tmp_path):
    r = subprocess.run([str(SPOTDIFF), "serve", "--max-pixels", "999999999999"], cwd=tmp_path,
                       env=subprocess_env(PYTHONWARNINGS="ignore"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "--max-pixels" in r.stderr


ROUNDS = 4


@pytest.mark.slow  # ~45 s on 2 busy cores: 204 detections through a real server
def test_50_concurrent_requests_bounded_and_memory_flat(tmp_path, tiny_model_file):
    import psutil

    a, b = astronaut_pair()
    files = {"image_a": ("a.png", png_bytes(a[::2, ::2].copy())), "image_b": ("b.png", png_bytes(b[::2, ::2].copy()))}
    args = ["--workers", "2", "--queue", "64", "--threads", "1", "--model", str(tiny_model_file),
            "--engine", "eager"]
    with running_server(args, tmp_path) as server:
        models = server.get_json("/v1/models")
        assert models["limits"]["workers"] == 2 and models["default_model"] == "cyws.pt"
        proc = psutil.Process(server.process.pid)

        def one(i: int) -> tuple[int, dict]:
            return post_detect(server.url, files, method="ssim" if i % 2 else "cyws")

        for i in range(4):  # warm-up: both methods, allocator pools
            assert one(i)[0] == 200
        rss = [proc.memory_info().rss]
        answers = []
        for _round in range(ROUNDS):
            with ThreadPoolExecutor(50) as ex:
                got = list(ex.map(one, range(50)))
            answers.append(got)
            rss.append(proc.memory_info().rss)
        statuses = [s for got in answers for s, _ in got]
        assert statuses == [200] * 50 * ROUNDS, [body for got in answers for s, body in got if s != 200][:3]
        # the same pair gives the same boxes every time, whatever the interleaving
        for method in ("ssim", "cyws"):
            distinct = {str(body["images"]) for got in answers for _, body in got if body["method"] == method}
            assert len(distinct) == 1, method
        health = server.get_json("/healthz")
        assert health["pending"] == 0 and health["served"] == 4 + 50 * ROUNDS
        mb = np.array(rss) / 2**20
        shown = f"RSS MB warm, then after each round of 50: {mb.round(1).tolist()}"
        # flat. glibc's per-thread arenas make RSS step by 20-45 MB in a round and give it back in
        # another (measured: 926, 946, 946, 927, 946 MB; CI runs saw 1177 -> 1222 in one round and
        # 1208, 1187, 1207, 1221), so no single step, nor their median, tells a leak from noise. A leak
        # adds up over rounds: after the first round of 50, three more add < 80 MB. (Tried: 1 MB kept
        # per request adds 31 + 60 + 64 = 155 MB and fails this; 0.24 MB per request hides in the
        # arenas' holes, RSS cannot see it.)
        assert mb[-1] - mb[1] < 80, shown
        assert mb[1] - mb[0] < 300, shown
    assert server.process.returncode is not None  # stopped by the fixture
