"""`spotdiff detect` end to end: JSON + PNGs for good input; for every bad input exit code 2, one line
on stderr, no traceback and no output files. In-process through `spotdiff.cli.main` (fast), and once
through the installed console script for the real exit code."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.env import SPOTDIFF, subprocess_env
from helpers.images import PASTE, astronaut_pair, iou, png_header_only
from spotdiff.cli import main
from spotdiff.detect import detect_pair


@pytest.fixture()
def pair(tmp_path, monkeypatch):
    """A (astronaut.png) and B (the same photo with a cat's face pasted in, JPEG); cwd = tmp_path."""
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the defaults are used
    a, b = astronaut_pair()
    Image.fromarray(a).save(tmp_path / "astronaut.png")
    Image.fromarray(b).save(tmp_path / "edited.jpg", quality=95)
    return tmp_path / "astronaut.png", tmp_path / "edited.jpg", b


def _run(argv, capsys):
    rc = main([str(x) for x in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_pasted_object_is_boxed_in_both_images(pair, capsys, tmp_path):
    a, b, _ = pair
    rc, out, err = _run(["detect", a, b, "--out", tmp_path / "out"], capsys)
    assert rc == 0, err
    outdir = tmp_path / "out"
    assert sorted(p.name for p in outdir.iterdir()) == [
        "astronaut.boxes.png", "astronaut_vs_edited.json", "astronaut_vs_edited.panel.png",
        "edited.boxes.png"]
    report = json.loads((outdir / "astronaut_vs_edited.json").read_text())
    assert report["method"] == "ssim" and report["model"] is None and report["num_changes"] == 1
    ia, ib = report["images"]
    assert ia["path"].endswith("astronaut.png") and (ia["width"], ia["height"]) == (512, 512)
    assert ib["path"].endswith("edited.jpg") and (ib["width"], ib["height"]) == (512, 512)
    assert len(ia["boxes"]) == 1 and len(ib["boxes"]) == 1
    assert iou(ia["boxes"][0], PASTE) >= 0.5 and iou(ib["boxes"][0], PASTE) >= 0.5
    assert ia["labels"] == ib["labels"] == [1] and 0 < ia["scores"][0] <= 1
    assert set(report["timings"]) >= {"load_s", "detect_s", "total_s"}
    for name in ("astronaut.boxes.png", "edited.boxes.png"):
        img = np.asarray(Image.open(outdir / name))
        assert img.shape == (512, 512, 3)
    assert "1 change(s)" in out


def test_identical_images_give_no_boxes(pair, capsys, tmp_path):
    a, _, _ = pair
    rc, _, err = _run(["detect", a, a, "--out", "o", "--json", "r.json"], capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["num_changes"] == 0 and report["images"][0]["boxes"] == report["images"][1]["boxes"] == []
    assert (tmp_path / "o" / "astronaut.a.boxes.png").exists()
    assert (tmp_path / "o" / "astronaut.b.boxes.png").exists()


def test_different_sizes_and_alignment(pair, capsys, tmp_path):
    a, _, b_img = pair
    # B: shifted 5 px and resized to 256×320, a different resolution and aspect ratio
    small = np.asarray(Image.fromarray(b_img[5:, 5:]).resize((256, 320), Image.BILINEAR))
    Image.fromarray(small).save(tmp_path / "small.png")
    Image.fromarray(np.asarray(Image.open(a))[:-5, :-5]).save(tmp_path / "a_crop.png")
    rc, _, err = _run(["detect", "a_crop.png", "small.png", "--align", "homography", "--json", "r.json",
                       "--out", "o"], capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    ia, ib = report["images"]
    assert (ib["width"], ib["height"]) == (256, 320)
    assert report["num_changes"] == 1, report
    x1, y1, x2, y2 = PASTE
    sx, sy = 256 / 507, 320 / 507
    assert iou(ia["boxes"][0], PASTE) >= 0.5
    assert iou(ib["boxes"][0], ((x1 - 5) * sx, (y1 - 5) * sy, (x2 - 5) * sx, (y2 - 5) * sy)) >= 0.5
    assert report["diagnostics"]["align"] != "none"


def test_top_k_min_score_and_ignore_mask(pair, capsys, tmp_path):
    a, b, _ = pair
    rc, _, err = _run(["detect", a, b, "--min-score", "0.99", "--json", "r1.json", "--out", "o"], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "r1.json").read_text())["num_changes"] == 0
    mask = np.zeros((512, 512), np.uint8)
    x1, y1, x2, y2 = PASTE
    mask[y1 - 10:y2 + 10, x1 - 10:x2 + 10] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    rc, _, err = _run(["detect", a, b, "--ignore-mask", "mask.png", "--top-k", "5", "--json", "r2.json",
                       "--out", "o"], capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "r2.json").read_text())
    assert report["num_changes"] == 0 and report["settings"]["ignore_mask"] == "mask.png"


def test_params_file_is_read(pair, capsys, tmp_path):
    a, b, _ = pair
    (tmp_path / "p.yaml").write_text("ssim:\n  max_side: 128\n")
    rc, _, err = _run(["detect", a, b, "--params", "p.yaml", "--json", "r.json", "--out", "o"], capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["diagnostics"]["working_size"] == [128, 128] and report["num_changes"] == 1


def test_python_api_returns_the_cli_structure(pair, capsys, tmp_path):
    a, b, _ = pair
    report = detect_pair(a, b, method="ssim", top_k=3)
    _run(["detect", a, b, "--json", "r.json", "--out", "o"], capsys)
    cli = json.loads((tmp_path / "r.json").read_text())
    assert set(cli) - set(report) == {"outputs"}
    assert report["images"][0]["boxes"] == cli["images"][0]["boxes"]


def test_render_helpers():
    from spotdiff.render import color_for, draw_boxes, heatmap_overlay, side_by_side

    img = np.full((60, 80, 3), 128, np.uint8)
    out = draw_boxes(img, [[10, 20, 50, 50], [70, 70, 70, 70], [np.nan, 0, 1, 1]], labels=[3, 4, 5],
                     scores=[0.9, 0.1, 0.2])
    assert out.shape == img.shape and (img == 128).all()  # input untouched
    assert tuple(out[35, 10]) == color_for(3)             # left edge of box #3 in its colour
    assert (out[40:45, 60:65] == 128).all()               # far from any box: unchanged
    big = draw_boxes(np.zeros((3000, 4000, 3), np.uint8), [[100, 100, 900, 900]])
    assert (big[500, 100:108] == color_for(1)).all()      # lines thicken with the image
    panel = side_by_side([img, np.zeros((120, 40, 3), np.uint8)], header="h", captions=["a", "b"])
    assert panel.ndim == 3 and panel.shape[0] > 120 and panel.shape[1] >= 80 * 2 + 20 + 16
    heat = heatmap_overlay(img, np.array([[0.0, 1.0]]), alpha=1.0)
    assert heat.shape == img.shape and heat[:, :10, 2].mean() > heat[:, -10:, 2].mean()  # blue→red


# ---------------------------------------------------------------- bad input


def _bad_case(case: str, tmp: Path, a: Path, b: Path) -> list:
    out = ["--out", tmp / "never", "--json", tmp / "never.json"]
    good = Path(a).read_bytes()
    if case == "missing":
        return ["detect", a, tmp / "nope.png", *out]
    if case == "empty":
        (tmp / "empty.png").write_bytes(b"")
        return ["detect", tmp / "empty.png", b, *out]
    if case == "directory":
        (tmp / "dir.png").mkdir()
        return ["detect", a, tmp / "dir.png", *out]
    if case == "corrupt":
        (tmp / "corrupt.png").write_bytes(good[: len(good) // 3])
        return ["detect", tmp / "corrupt.png", b, *out]
    if case == "garbage":
        (tmp / "garbage.jpg").write_bytes(os.urandom(4096))
        return ["detect", a, tmp / "garbage.jpg", *out]
    if case == "text":
        (tmp / "readme.png").write_text("hello, I am not a picture\n")
        return ["detect", a, tmp / "readme.png", *out]
    if case == "too_large":
        png_header_only(tmp / "bomb.png", 30000, 30000)
        return ["detect", a, tmp / "bomb.png", *out]
    if case == "mask_size":
        Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp / "mask.png")
        return ["detect", a, b, "--ignore-mask", tmp / "mask.png", *out]
    if case == "mask_missing":
        return ["detect", a, b, "--ignore-mask", tmp / "nomask.png", *out]
    if case == "top_k_zero":
        return ["detect", a, b, "--top-k", "0", *out]
    if case == "top_k_text":
        return ["detect", a, b, "--top-k", "ten", *out]
    if case == "min_score":
        return ["detect", a, b, "--min-score", "-1", *out]
    if case == "method":
        return ["detect", a, b, "--method", "magic", *out]
    if case == "align":
        return ["detect", a, b, "--align", "affine", *out]
    if case == "params_missing":
        return ["detect", a, b, "--params", tmp / "nope.yaml", *out]
    if case == "params_bad":
        (tmp / "bad.yaml").write_text("ssim:\n  sigma: -1\n")
        return ["detect", a, b, "--params", tmp / "bad.yaml", *out]
    if case == "out_is_file":
        (tmp / "file.txt").write_text("x")
        return ["detect", a, b, "--out", tmp / "file.txt", "--json", tmp / "never.json"]
    if case == "model_without_cyws":
        return ["detect", a, b, "--model", "models/cyws.pt", *out]
    raise AssertionError(case)


BAD_CASES = ["missing", "empty", "directory", "corrupt", "garbage", "text", "too_large", "mask_size",
             "mask_missing", "top_k_zero", "top_k_text", "min_score", "method", "align", "params_missing",
             "params_bad", "out_is_file", "model_without_cyws"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exit_2_one_line_no_outputs(pair, capsys, tmp_path, case):
    a, b, _ = pair
    argv = _bad_case(case, tmp_path, a, b)
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, out, err = _run(argv, capsys)
    assert rc == 2, (case, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spotdiff: error: ") and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert not (tmp_path / "never").exists() and not (tmp_path / "never.json").exists()


def test_cyws_without_a_model_is_a_clear_error(pair, capsys, tmp_path, monkeypatch):
    """No learned module, or no models/cyws.pt in cwd and no --model: exit 2 with the same advice."""
    a, b, _ = pair
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # no registry to find a champion in
    rc, _, err = _run(["detect", a, b, "--method", "cyws", "--out", "o"], capsys)
    assert rc == 2 and "--method cyws needs a trained model" in err and not (tmp_path / "o").exists()
    assert len(err.strip().splitlines()) == 1


def test_cyws_through_the_seam(pair, capsys, tmp_path):
    """The learned method behind the same front door (an untrained network: only the plumbing counts)."""
    cyws = pytest.importorskip("spotdiff.models.cyws")
    pytest.importorskip("spotdiff.methods.learned")
    from spotdiff.models.checkpoint import save_model
    from spotdiff.params import ModelParams

    save_model(cyws.CYWS.from_params(ModelParams()), tmp_path / "tiny.pt")
    a, b, _ = pair
    rc, _, err = _run(["detect", a, b, "--method", "cyws", "--model", "tiny.pt", "--top-k", "3",
                       "--json", "r.json", "--out", "o"], capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["method"] == "cyws" and report["model"] == "tiny.pt" and report["paired"] is False
    for img in report["images"]:
        assert len(img["boxes"]) <= 3 and len(img["scores"]) == len(img["boxes"])
    assert (tmp_path / "o" / "astronaut.boxes.png").exists()


def test_console_script_real_exit_codes(pair, tmp_path):
    a, b, _ = pair
    env = subprocess_env(PYTHONWARNINGS="ignore")
    bad = subprocess.run([str(SPOTDIFF), "detect", str(a), str(tmp_path / "missing.png"), "--out", "o"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "missing.png: no such file" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "o").exists()
    good = subprocess.run([str(SPOTDIFF), "detect", str(a), str(b), "--out", "o"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert good.returncode == 0, good.stderr
    assert (tmp_path / "o" / "astronaut_vs_edited.json").exists()
