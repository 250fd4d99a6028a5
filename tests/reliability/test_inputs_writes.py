"""Outputs are all or nothing: a write that fails (file-size limit, /proc, a read-only file system,
Ctrl-C) leaves no output and no new folder, a previous run's outputs stay as they were, folders get
ordinary permissions, and a stage that fails leaves no empty --out behind."""

from __future__ import annotations

import os
import stat

import pytest
import yaml

from helpers import hostile
from helpers.coco import make_coco_source
from reliability.inputs_common import assert_user_error, run_cases
from spotdiff.cli import main
from spotdiff.data.inpaint import run_inpaint
from spotdiff.fsutil import atomic_dir, atomic_paths
from spotdiff.params import InpaintParams


@pytest.fixture()
def pair(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.png").write_bytes(hostile.real_png(320, 240, seed=0))
    (tmp_path / "b.png").write_bytes(hostile.real_png(320, 240, seed=1))
    return tmp_path / "a.png", tmp_path / "b.png"


def _run(argv, capfd):
    rc = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return rc, out, err


@pytest.mark.parametrize("where", ["json_in_proc", "out_in_proc", "out_in_sys"])
def test_special_file_systems_are_one_line_and_leave_nothing(pair, tmp_path, capfd, where):
    out = tmp_path / "out"
    argv = {"json_in_proc": ["--out", out, "--json", "/proc/spotdiff-report.json"],
            "out_in_proc": ["--out", "/proc/spotdiff-out"],
            "out_in_sys": ["--out", "/sys/spotdiff-out"]}[where]
    rc, o, err = _run(["detect", *pair, *argv], capfd)
    line = assert_user_error(rc, o, err, out)
    assert "/proc/spotdiff" in line or "/sys/spotdiff-out" in line
    assert ".tmp" not in line  # the output is named, not its temporary sibling
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_read_only_folder_is_one_line(pair, tmp_path, capfd):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, o, err = _run(["detect", *pair, "--out", ro / "sub"], capfd)
        assert_user_error(rc, o, err, ro / "sub")
    finally:
        ro.chmod(0o755)


@pytest.fixture(scope="module")
def inpainted(tmp_path_factory):
    root = tmp_path_factory.mktemp("writes")
    source = make_coco_source(root / "source", num_images=6)
    run_inpaint(InpaintParams(max_versions=2, dilate_px=2), source, root / "inpainted")
    return root / "inpainted"


def test_file_size_limit_leaves_nothing_and_keeps_earlier_outputs(pair, tmp_path, inpainted):
    """RLIMIT_FSIZE (ulimit -f) in the child: detect into a new folder and over an earlier run's
    outputs, and the pairs stage (manifest fits, the preview does not)."""
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"pairs": {"preview_count": 8}, "model": {"image_size": 64}}))
    earlier = tmp_path / "earlier"
    assert main(["detect", *map(str, pair), "--out", str(earlier)]) == 0
    before = {p.name: p.read_bytes() for p in earlier.iterdir()}
    cases = [
        {"argv": ["detect", *pair, "--out", tmp_path / "new" / "out"], "cwd": tmp_path, "fsize": 20_000},
        {"argv": ["detect", *pair, "--out", earlier], "cwd": tmp_path, "fsize": 20_000},
        {"argv": ["pairs", "--params", params, "--inpainted", inpainted, "--out", tmp_path / "pairs"],
         "cwd": tmp_path, "fsize": 6_000},
        {"argv": ["pairs", "--params", params, "--inpainted", inpainted, "--out", tmp_path / "pairs_ok"],
         "cwd": tmp_path},
    ]
    new, over, pairs, pairs_ok = run_cases(cases, tmp_path)
    line = assert_user_error(new["rc"], new["stdout"], new["stderr"], tmp_path / "new")
    assert "File too large" in line
    assert not (tmp_path / "new").exists()
    assert_user_error(over["rc"], over["stdout"], over["stderr"])
    assert {p.name: p.read_bytes() for p in earlier.iterdir()} == before
    assert_user_error(pairs["rc"], pairs["stdout"], pairs["stderr"], tmp_path / "pairs")
    assert not (tmp_path / "pairs").exists()
    # the same stage without the limit writes both (the limit, not the data, made it fail)
    assert pairs_ok["rc"] == 0, pairs_ok["stderr"][-2000:]
    assert sorted(p.name for p in (tmp_path / "pairs_ok").iterdir()) == ["manifest.json", "preview.png"]
    assert (tmp_path / "pairs_ok" / "manifest.json").stat().st_size < 6_000 < \
        (tmp_path / "pairs_ok" / "preview.png").stat().st_size


def test_atomic_paths_is_all_or_nothing(tmp_path):
    targets = {"a": tmp_path / "new" / "deep" / "a.txt", "b": tmp_path / "new" / "deep" / "b.txt"}
    with pytest.raises(OSError):
        with atomic_paths(targets) as tmp:
            tmp["a"].write_text("a")
            raise OSError(28, "No space left on device", str(tmp["b"]))
    assert not (tmp_path / "new").exists()
    with atomic_paths(targets) as tmp:
        tmp["a"].write_text("a")
        tmp["b"].write_text("b")
    assert sorted(p.name for p in targets["a"].parent.iterdir()) == ["a.txt", "b.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_dir_and_files_follow_the_umask(tmp_path, umask):
    import spotdiff.fsutil as fsutil

    old = os.umask(umask)
    saved = fsutil._UMASK
    fsutil._UMASK = umask  # read once at import, as a process's umask is
    try:
        with atomic_dir(tmp_path / "built") as tmp:
            (tmp / "x.txt").write_text("x")
        with atomic_paths({"f": tmp_path / "f.txt"}) as tmp:
            tmp["f"].write_text("f")
    finally:
        fsutil._UMASK = saved
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "built").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o666 & ~umask


STAGES = {
    "pairs_missing_input": ["pairs", "--inpainted", "nope", "--out", "OUT"],
    "evaluate_missing_testsets": ["evaluate", "--testsets", "nope", "--model", "nope.pt", "--no-mlflow",
                                  "--out", "OUT"],
    "train_missing_manifest": ["train", "--pairs", "nope.json", "--no-tracking", "--out", "OUT"],
    "inpaint_missing_source": ["inpaint", "--source", "nope", "--out", "OUT"],
    "testsets_bad_params": ["testsets", "--params", "bad.yaml", "--out", "OUT"],
    "data_bad_params": ["data", "--params", "bad.yaml", "--out", "OUT"],
}


@pytest.mark.parametrize("case", sorted(STAGES))
def test_failed_stages_leave_no_empty_out(tmp_path, monkeypatch, capfd, case):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("testsets:\n  pairs_per_set: .inf\ndata:\n  seed: -1\n")
    out = tmp_path / "new" / "out"
    argv = [str(out) if a == "OUT" else a for a in STAGES[case]]
    rc, o, err = _run(argv, capfd)
    assert_user_error(rc, o, err)
    assert not (tmp_path / "new").exists()
