"""F11 item 6: a bad param met through `dvc repro` must not cost the last good outputs. DVC removes a
stage's outputs before running it, so the `check_params` stage, on which every stage depends, runs
first and stops the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers.dvc_project import dvc, dvc_md5s, make_project, merged_params
from helpers.env import SPOTDIFF, subprocess_env

pytestmark = pytest.mark.usefixtures("telemetry_off")

TINY_TESTSETS = {"testsets": {"pairs_per_set": 1, "image_size": 64}}


def test_check_params_command_rejects_a_bad_value_in_one_line(tmp_path: Path):
    import subprocess

    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({"evaluate": {"iou_threshold": 1.5}}))
    out = tmp_path / "params.ok"
    proc = subprocess.run([str(SPOTDIFF), "check-params", "--params", str(bad), "--out", str(out)],
                          capture_output=True, text=True, env=subprocess_env())
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spotdiff: error: ") and "iou_threshold" in lines[0]
    assert not out.exists()  # nothing written for an invalid file
    bad.write_text(yaml.safe_dump({"evaluate": {"iou_threshold": 0.5}}))
    ok = subprocess.run([str(SPOTDIFF), "check-params", "--params", str(bad), "--out", str(out)],
                        capture_output=True, text=True, env=subprocess_env())
    assert ok.returncode == 0, ok.stderr
    assert out.read_bytes() == Path(__file__).resolve().parents[2].joinpath("params.ok").read_bytes()


def test_every_stage_depends_on_check_params():
    from helpers.env import REPO_ROOT

    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages)[0] == "check_params"
    assert stages["check_params"]["deps"][0] == "params.yaml"
    for name, stage in stages.items():
        if name != "check_params":
            assert "params.ok" in stage["deps"], name


def test_a_bad_param_through_dvc_repro_keeps_the_previous_outputs(tmp_path: Path):
    repo = make_project(tmp_path / "proj", ["testsets"], TINY_TESTSETS)
    dvc(["repro"], repo)
    before = {p.relative_to(repo).as_posix(): p.read_bytes()
              for p in sorted((repo / "data/testsets").rglob("*")) if p.is_file()}
    assert before
    md5s = dvc_md5s(repo)

    # A bad value in the very section the stage reads: without check_params DVC would delete
    # data/testsets before `spotdiff testsets` rejected it.
    bad = merged_params({"testsets": {"pairs_per_set": 0, "image_size": 64}})
    (repo / "params.yaml").write_text(yaml.safe_dump(bad))
    failed = dvc(["repro"], repo, check=False)
    assert failed.returncode != 0
    assert "testsets.pairs_per_set" in failed.stdout + failed.stderr
    after = {p.relative_to(repo).as_posix(): p.read_bytes()
             for p in sorted((repo / "data/testsets").rglob("*")) if p.is_file()}
    assert after == before
    assert dvc_md5s(repo) == md5s  # dvc.lock untouched

    # Fixed: only check_params reruns (its output has the same bytes), nothing else is stale.
    (repo / "params.yaml").write_text(yaml.safe_dump(merged_params(TINY_TESTSETS)))
    again = dvc(["repro"], repo)
    assert "Running stage 'testsets'" not in again.stdout, again.stdout
