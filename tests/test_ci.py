"""CI's retraining rule: only real changes to params or code make dvc.lock stale."""

from __future__ import annotations

import json

import pytest

from spotdiff.cli import main
from spotdiff.dvcstatus import stale_stages


def test_missing_outputs_in_a_fresh_clone_are_not_stale():
    status = {"inpaint": [{"changed deps": {"data/source": "deleted"}},
                          {"changed outs": {"data/inpainted": "not in cache"}}]}
    assert stale_stages(status) == {}


def test_param_and_code_changes_are_stale():
    status = {
        "data": [{"changed deps": {"params.yaml": {"data.num_images": "modified"}}}],
        "train": [{"changed deps": {"src/spotdiff/training.py": "modified", "data/pairs": "deleted"}}],
        "evaluate": ["changed command"],
    }
    stale = stale_stages(status)
    assert stale == {"data": ["params.yaml:data.num_images modified"],
                     "train": ["src/spotdiff/training.py modified"],
                     "evaluate": ["changed command"]}


def _metrics(tmp_path, value):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"cyws": {"coco_inpainted": {"all": {"ap50": value}}}}))
    params = tmp_path / "params.yaml"
    params.write_text("register:\n  ap_floor: 0.3\n  primary_metric: cyws/coco_inpainted/all/ap50\n")
    return params, path


def test_check_floor_passes_and_fails(tmp_path, capsys):
    params, metrics = _metrics(tmp_path, 0.45)
    assert main(["check-floor", "--params", str(params), "--metrics", str(metrics)]) == 0
    params, metrics = _metrics(tmp_path, 0.12)
    assert main(["check-floor", "--params", str(params), "--metrics", str(metrics)]) == 2
    err = capsys.readouterr().err
    assert "below register.ap_floor 0.3000" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content", [None, "{}"])
def test_check_floor_without_metrics_is_a_clear_error(tmp_path, capsys, content):
    params, metrics = _metrics(tmp_path, 0.5)
    if content is None:
        metrics.unlink()
    else:
        metrics.write_text(content)
    assert main(["check-floor", "--params", str(params), "--metrics", str(metrics)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
