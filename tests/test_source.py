"""The `data` stage's source dataset (`spotdiff.data.source`): the embedded generator, the COCO 2017
download + selection (against a local server), DVC wiring. Params errors: test_params.py; the download
and extraction themselves: test_download.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from pycocotools.coco import COCO

from helpers.coco import coco_png
from helpers.env import VENV_BIN, subprocess_env
from helpers.http import md5_of
from spotdiff.cli import main
from spotdiff.data import coco2017
from spotdiff.data.embedded import size_class
from spotdiff.data.source import write_dataset
from spotdiff.params import CocoSourceParams, DataParams


def _write_params(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump({"data": data}))
    return path


# ---------------------------------------------------------------- embedded source


def test_embedded_is_deterministic_and_loads_in_pycocotools(tmp_path):
    params = _write_params(tmp_path / "params.yaml", {"num_images": 12, "seed": 3})
    assert main(["data", "--params", str(params), "--out", str(tmp_path / "a")]) == 0
    assert main(["data", "--params", str(params), "--out", str(tmp_path / "b")]) == 0
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "instances.json").read_bytes() == (b / "instances.json").read_bytes()
    names = sorted(p.name for p in (a / "images").iterdir())
    assert len(names) == 12
    for name in names:
        assert (a / "images" / name).read_bytes() == (b / "images" / name).read_bytes()

    coco = COCO(str(a / "instances.json"))
    assert len(coco.getImgIds()) == 12
    ann_ids = coco.getAnnIds()
    assert len(ann_ids) >= 12 * 2 * 0.6  # min_objects=2, a few may be occluded away
    for ann in coco.loadAnns(ann_ids):
        mask = coco.annToMask(ann)
        img = coco.loadImgs(ann["image_id"])[0]
        assert mask.shape == (img["height"], img["width"])
        assert mask.sum() == ann["area"]
        x, y, w, h = ann["bbox"]
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)


def test_embedded_spans_coco_size_classes_and_different_seeds_differ(tmp_path):
    summary = write_dataset(DataParams(num_images=24, seed=0), tmp_path / "s0")
    assert all(summary["by_size"][k] > 0 for k in ("small", "medium", "large")), summary
    write_dataset(DataParams(num_images=2, seed=1), tmp_path / "s1")
    first0 = (tmp_path / "s0" / "images" / "000001.png").read_bytes()
    first1 = (tmp_path / "s1" / "images" / "000001.png").read_bytes()
    assert first0 != first1


def test_embedded_objects_overlap_somewhere(tmp_path):
    write_dataset(DataParams(num_images=24, seed=0, min_objects=4, max_objects=6), tmp_path / "s")
    coco = COCO(str(tmp_path / "s" / "instances.json"))
    overlapping = 0
    for img_id in coco.getImgIds():
        boxes = [a["bbox"] for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id))]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                (x1, y1, w1, h1), (x2, y2, w2, h2) = boxes[i], boxes[j]
                if x1 < x2 + w2 and x2 < x1 + w1 and y1 < y2 + h2 and y2 < y1 + h1:
                    overlapping += 1
    assert overlapping > 0


def test_failed_run_leaves_previous_dataset_untouched(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_dataset(DataParams(num_images=2), out)
    before = (out / "instances.json").read_bytes()

    from spotdiff.data import embedded

    calls = {"n": 0}
    real = embedded.generate_scene

    def dies_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as a kill mid-run
        return real(*args, **kwargs)

    monkeypatch.setattr(embedded, "generate_scene", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(DataParams(num_images=5), out)
    assert (out / "instances.json").read_bytes() == before
    assert len(list((out / "images").iterdir())) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]


# ---------------------------------------------------------------- COCO 2017 against a local server


def test_coco2017_download_select_extract(tmp_path, coco2017_server):
    url, root = coco2017_server.url, coco2017_server.root
    cfg = {"source": "coco2017", "coco": {
        "base_url": url, "download_dir": str(tmp_path / "dl"),
        "images_md5": md5_of(root / "zips" / "train2017.zip"),
        "annotations_md5": md5_of(root / "annotations" / "annotations_trainval2017.zip"),
        "min_object_area": 10.0, "max_object_area_fraction": 0.5, "max_images": 10}}
    params = _write_params(tmp_path / "params.yaml", cfg)
    assert main(["data", "--params", str(params), "--out", str(tmp_path / "out")]) == 0
    coco = COCO(str(tmp_path / "out" / "instances.json"))
    # image 2 (only a too-large object) and 3 (only a too-small one) are not selected; crowd dropped
    assert sorted(coco.getImgIds()) == [1, 4]
    assert sorted(coco.getAnnIds()) == [1, 2, 5]
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == [
        "000000000001.jpg", "000000000004.jpg"]
    assert (tmp_path / "out" / "images" / "000000000004.jpg").read_bytes() == coco_png(4)

    # max_images keeps the first images by id
    cfg["coco"]["max_images"] = 1
    _write_params(params, cfg)
    assert main(["data", "--params", str(params), "--out", str(tmp_path / "out1")]) == 0
    assert COCO(str(tmp_path / "out1" / "instances.json")).getImgIds() == [1]


def test_selection_bounds():
    instances = {"images": [{"id": 1, "width": 100, "height": 100, "file_name": "1.jpg"}],
                 "annotations": [{"id": i, "image_id": 1, "area": 50.0 * i, "iscrowd": 0} for i in (1, 2, 3)],
                 "categories": []}
    out = coco2017.select(instances, CocoSourceParams(min_object_area=60, max_objects_per_image=2))
    assert [a["id"] for a in out["annotations"]] == [2, 3]
    out = coco2017.select(instances, CocoSourceParams(max_objects_per_image=2))
    assert out["images"] == []


# ---------------------------------------------------------------- DVC wiring


def _dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # the stage's `spotdiff` command must be found on PATH, as it is inside the project's venv
    return subprocess.run([str(VENV_BIN / "dvc"), *args], cwd=cwd, capture_output=True, text=True,
                          env=subprocess_env(venv_on_path=True))


def test_dvc_repro_then_status_and_param_change(tmp_path, repo_root):
    work = tmp_path / "proj"
    work.mkdir()
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    (work / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"data": stages["data"]}}))
    for dep in stages["data"]["deps"]:
        (work / dep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo_root / dep, work / dep)
    _write_params(work / "params.yaml", {"num_images": 3})
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    assert _dvc(["init", "-q"], work).returncode == 0
    repro = _dvc(["repro"], work)
    assert repro.returncode == 0, repro.stderr
    assert COCO(str(work / "data/source/instances.json")).getImgIds() == [1, 2, 3]
    status = _dvc(["status"], work)
    assert "up to date" in status.stdout, status.stdout
    _write_params(work / "params.yaml", {"num_images": 4})
    status = _dvc(["status"], work)
    assert status.stdout.startswith("data:") and "params.yaml" in status.stdout and "modified" in status.stdout


def test_size_classes_follow_coco():
    assert [size_class(a) for a in (32 * 32 - 1, 32 * 32, 96 * 96 - 1, 96 * 96)] == [
        "small", "medium", "medium", "large"]
