"""Hostile images through `spotdiff detect`: huge declared sizes in every format the loader accepts,
extreme aspect ratios, broken and strange files. All cases run in one child process under a 3 GB
data limit (a regression that decodes or allocates before checking fails here, it cannot take the
machine down); each asserts exit 2 + one `spotdiff: error:` line + no traceback + no outputs, or a
correct result."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import hostile
from reliability.inputs_common import assert_user_error, run_cases

# ---------------------------------------------------------------- the cases

BROKEN = {
    "zero_bytes.png": b"",
    "text_named.png": b"hello, I am not a picture\n",
    "truncated.png": hostile.real_png()[:300],
    "truncated.jpg": hostile.encoded("JPEG")[:400],
    "truncated.tif": hostile.encoded("TIFF")[:4000],
    "truncated.webp": hostile.encoded("WEBP")[:200],
    "header_only.bmp": hostile.encoded("BMP")[:60],
    "zero_width.png": hostile.png(0, 10),
    "random_bytes.jpg": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    "pickle_named.png": b"",  # filled in per run: a pickle whose payload would create a marker file
    "html_named.jpg": b"<!doctype html><html><body>404 Not Found</body></html>\n",
    "svg_named.png": b'<svg xmlns="http://www.w3.org/2000/svg" width="100000" height="100000"/>\n',
}

SPECIAL = ["directory", "symlink_loop", "dangling_symlink", "fifo", "dev_zero", "missing"]

# (name, (width, height)): shapes that must give a correct result, never a crash or a huge panel
SHAPES = {"line_100000x1": (100_000, 1), "line_20000x1": (20_000, 1), "column_1x100000": (1, 100_000),
          "dot_1x1": (1, 1), "tiny_3x2": (3, 2)}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Run every case once, in one process under the memory limit; {case name: (result, out dir)}."""
    root = tmp_path_factory.mktemp("images")
    good = root / "good.png"
    good.write_bytes(hostile.real_png())
    marker = root / "PICKLE_RAN"
    cases, names = [], []

    def add(name: str, argv: list, out: Path) -> None:
        names.append(name)
        cases.append({"argv": [*argv, "--out", out, "--json", out / "report.json"], "cwd": root})

    for name, data in {**hostile.HUGE_DECLARED, **BROKEN}.items():
        path = root / name
        path.write_bytes(hostile.evil_pickle(marker) if name == "pickle_named.png" else data)
        add(name, ["detect", path, good], root / f"out-{name}")
        add(f"{name} (as B)", ["detect", good, path], root / f"out-B-{name}")
    for name in SPECIAL:
        path = root / f"special-{name}.png"
        if name == "directory":
            path.mkdir()
        elif name == "symlink_loop":
            os.symlink(path, path)
        elif name == "dangling_symlink":
            os.symlink(root / "nowhere.png", path)
        elif name == "fifo":
            os.mkfifo(path)
        elif name == "dev_zero":
            path = Path("/dev/zero")
        add(name, ["detect", path, good], root / f"out-{name}")
    for name, (w, h) in SHAPES.items():
        path = root / f"{name}.png"
        Image.new("RGB", (w, h), (200, 10, 10)).save(path)
        add(name, ["detect", path, path], root / f"out-{name}")
    # the ignore mask goes through the same loader and caps
    (root / "huge-mask.png").write_bytes(hostile.HUGE_DECLARED["huge.png"])
    add("mask_huge", ["detect", good, good, "--ignore-mask", root / "huge-mask.png"], root / "out-mask")
    run = run_cases(cases, root)
    return {n: (r, Path(c["argv"][-3])) for n, r, c in zip(names, run, cases)}, marker


@pytest.mark.parametrize("name", sorted(hostile.HUGE_DECLARED))
def test_huge_declared_size_is_refused_before_decoding(results, name):
    by_name, _ = results
    for key in (name, f"{name} (as B)"):
        r, out = by_name[key]
        line = assert_user_error(r["rc"], r["stdout"], r["stderr"], out)
        assert "too large" in line and name in line
        assert r["raised"] is None
    # nothing near the declared size was allocated: the child stayed under its 3 GB limit and far below
    assert by_name[name][0]["peak_rss_mb"] < 2500


@pytest.mark.parametrize("name", sorted(BROKEN) + SPECIAL)
def test_broken_or_strange_file_is_one_line(results, name):
    by_name, marker = results
    for key in (name, f"{name} (as B)"):
        if key not in by_name:
            continue
        r, out = by_name[key]
        assert_user_error(r["rc"], r["stdout"], r["stderr"], out)
    assert not marker.exists(), "a pickle payload ran"


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_extreme_shapes_give_a_result_and_a_bounded_panel(results, name):
    by_name, _ = results
    r, out = by_name[name]
    assert r["rc"] == 0 and "Traceback" not in r["stderr"], r["stderr"][-2000:]
    report = json.loads((out / "report.json").read_text())
    w, h = SHAPES[name]
    assert (report["images"][0]["width"], report["images"][0]["height"]) == (w, h)
    assert report["num_changes"] == 0  # the same image twice
    panel = next(out.glob("*.panel.png"))
    with Image.open(panel) as im:
        assert im.width <= 4096 and im.height <= 1200, im.size
    assert r["peak_rss_mb"] < 2500


def test_a_huge_ignore_mask_is_refused_too(results):
    r, out = results[0]["mask_huge"]
    line = assert_user_error(r["rc"], r["stdout"], r["stderr"], out)
    assert "too large" in line
