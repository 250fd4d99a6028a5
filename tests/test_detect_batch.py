"""`spotdiff detect-batch`: a folder of NAME_a/NAME_b pairs or a CSV → annotated PNGs and one JSON line
per pair (the report of `spotdiff detect --json`), one model load for the run, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from spotdiff.cli import main

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(argv, capsys):
    rc = main([str(x) for x in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def write_pairs(folder, n: int = 3):
    """n noise pairs at 96×72, pair i with a bright block at a different place; B as JPEG-free PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    names = []
    for i in range(n):
        a = (rng.random((72, 96, 3)) * 255).astype(np.uint8)
        b = a.copy()
        b[10 + 15 * i:30 + 15 * i, 20:45] = 250
        Image.fromarray(a).save(folder / f"scene{i}_a.png")
        Image.fromarray(b).save(folder / f"scene{i}_b.png")
        names.append(f"scene{i}")
    return names


def test_folder_of_pairs_gives_pngs_and_the_detect_report(tmp_path, capsys):
    from spotdiff.detect import detect_pair

    names = write_pairs(tmp_path / "in")
    (tmp_path / "in" / "notes.txt").write_text("ignored")
    rc, out, err = _run(["detect-batch", tmp_path / "in", "--out", tmp_path / "out"], capsys)
    assert rc == 0, err
    lines = [json.loads(x) for x in (tmp_path / "out" / "report.jsonl").read_text().splitlines()]
    assert [x["name"] for x in lines] == names
    for line in lines:
        want = detect_pair(tmp_path / "in" / f"{line['name']}_a.png", tmp_path / "in" / f"{line['name']}_b.png")
        assert line["images"] == want["images"] and line["num_changes"] == want["num_changes"] >= 1
        assert set(want) <= set(line)
        for key in ("boxes_a", "boxes_b"):
            png = Image.open(line["outputs"][key])
            assert png.size == (96, 72)
    assert not (tmp_path / "out" / "report.jsonl.partial").exists()
    assert "3 pair(s)" in out and "detect-batch" in err  # the progress bar is on stderr


def test_csv_of_pairs_with_names_and_relative_paths(tmp_path, capsys):
    write_pairs(tmp_path / "imgs", 2)
    csv = tmp_path / "pairs.csv"
    csv.write_text("name,image_a,image_b\nfirst,imgs/scene0_a.png,imgs/scene0_b.png\n"
                   f"second,{tmp_path}/imgs/scene1_a.png,imgs/scene1_b.png\n")
    rc, _, err = _run(["detect-batch", csv, "--out", tmp_path / "o", "--top-k", "1"], capsys)
    assert rc == 0, err
    lines = [json.loads(x) for x in (tmp_path / "o" / "report.jsonl").read_text().splitlines()]
    assert [x["name"] for x in lines] == ["first", "second"]
    assert all(len(x["images"][0]["boxes"]) <= 1 and x["settings"]["top_k"] == 1 for x in lines)
    assert (tmp_path / "o" / "second.b.boxes.png").is_file()


def test_unreadable_pair_is_recorded_and_the_run_goes_on(tmp_path, capsys):
    write_pairs(tmp_path / "in", 2)
    (tmp_path / "in" / "broken_a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "in" / "broken_b.png").write_bytes((tmp_path / "in" / "scene0_b.png").read_bytes())
    rc, _, err = _run(["detect-batch", tmp_path / "in", "--out", tmp_path / "out"], capsys)
    assert rc == 1
    lines = {x["name"]: x for x in map(json.loads, (tmp_path / "out" / "report.jsonl").read_text().splitlines())}
    assert set(lines) == {"broken", "scene0", "scene1"}
    assert "broken_a.png" in lines["broken"]["error"] and "\n" not in lines["broken"]["error"]
    assert lines["scene1"]["num_changes"] >= 1
    assert "1 pair(s) could not be read" in err


@pytest.mark.parametrize("case, needle", [
    ("unmatched", "lonely_a.png has no lonely_b.*"),
    ("empty", "no NAME_a.* / NAME_b.* image pairs"),
    ("csv-missing-file", "listed image(s) not found"),
    ("csv-short-line", "line 1 has no two image paths"),
    ("no-such-source", "no such folder or CSV"),
    ("bad-top-k", "--top-k"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, case, needle):
    src = tmp_path / "in"
    write_pairs(src, 1)
    extra = []
    if case == "unmatched":
        (src / "lonely_a.png").write_bytes((src / "scene0_a.png").read_bytes())
    elif case == "empty":
        src = tmp_path / "empty"
        src.mkdir()
    elif case == "csv-missing-file":
        src = tmp_path / "p.csv"
        src.write_text("in/scene0_a.png,in/nope.png\n")
    elif case == "csv-short-line":
        src = tmp_path / "p.csv"
        src.write_text("in/scene0_a.png\n")
    elif case == "no-such-source":
        src = tmp_path / "nowhere"
    else:
        extra = ["--top-k", "zero"]
    rc, _, err = _run(["detect-batch", src, "--out", tmp_path / "out", *extra], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("spotdiff: error: ") and needle in err, err
    assert not (tmp_path / "out").exists()


def test_one_model_load_for_the_whole_run(tmp_path, capsys, tiny_model_file, monkeypatch):
    import spotdiff.methods.learned as learned

    loads = []
    real = learned.load_reference
    monkeypatch.setattr(learned, "load_reference", lambda ref: loads.append(ref) or real(ref))
    write_pairs(tmp_path / "in", 3)
    rc, _, err = _run(["detect-batch", tmp_path / "in", "--out", tmp_path / "out", "--method", "cyws",
                       "--model", tiny_model_file, "--engine", "eager"], capsys)
    assert rc == 0, err
    assert loads == [str(tiny_model_file)]
    lines = [json.loads(x) for x in (tmp_path / "out" / "report.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(x["method"] == "cyws" and x["model"] == str(tiny_model_file) for x in lines)
