"""Hostile files other than images: model checkpoints (pickle payloads, broken, huge declared
settings, a zip bomb, NaN weights), pickled .npy/.pkl annotations, archives (traversal, links, special
members, bad CRC, truncation), COCO instances missing keys, and boxes a barely trained model emits.
Checkpoint cases go through `spotdiff detect --method cyws` in one child process under a 3 GB limit."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import hostile
from helpers.models import save_tiny_cyws
from reliability.inputs_common import assert_user_error, run_cases
from spotdiff.data.coco2017 import select
from spotdiff.data.safe_pickle import load_npy_plain, load_pickle_plain
from spotdiff.download import extract_archive
from spotdiff.errors import SpotdiffError
from spotdiff.params import CocoSourceParams

# ---------------------------------------------------------------- checkpoints through detect


def _zip_bomb(path: Path, good: Path, declared: int = 0xFFFF0000) -> None:
    """A real small checkpoint whose zip directory declares one member ~4 GB uncompressed."""
    data = bytearray(good.read_bytes())
    cd = data.rfind(b"PK\x01\x02")  # the last central-directory entry
    struct.pack_into("<I", data, cd + 24, declared)
    path.write_bytes(bytes(data))


def _checkpoints(root: Path, marker: Path, good: Path) -> dict[str, Path]:
    files = {}

    def put(name: str, data: bytes) -> None:
        (root / name).write_bytes(data)
        files[name] = root / name

    torch.save({"format": "spotdiff-cyws/1", "model": {}, "state_dict": hostile._Marker(marker)},
               root / "payload_zip.pt")
    files["payload_zip.pt"] = root / "payload_zip.pt"
    put("payload_raw_pickle.pt", hostile.evil_pickle(marker))
    put("truncated.pt", good.read_bytes()[: good.stat().st_size // 2])
    put("empty.pt", b"")
    put("random.pt", np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "not a model")
    put("other_zip.pt", buf.getvalue())
    cfg = torch.load(good, weights_only=True)["model"]
    torch.save({"format": "spotdiff-cyws/1", "model": {**cfg, "image_size": 16384}, "state_dict": {}},
               root / "image_size_16384.pt")
    files["image_size_16384.pt"] = root / "image_size_16384.pt"
    torch.save({"format": "spotdiff-cyws/1", "model": {**cfg, "decoder_channels": [4096] * 5}, "state_dict": {}},
               root / "decoder_4096.pt")
    files["decoder_4096.pt"] = root / "decoder_4096.pt"
    torch.save({"format": "spotdiff-cyws/1", "model": {**cfg, "max_boxes": 10**9}, "state_dict": {}},
               root / "max_boxes_1e9.pt")
    files["max_boxes_1e9.pt"] = root / "max_boxes_1e9.pt"
    torch.save({"format": "spotdiff-cyws/1", "model": cfg, "state_dict": {"x": torch.zeros(3)}},
               root / "wrong_weights.pt")
    files["wrong_weights.pt"] = root / "wrong_weights.pt"
    _zip_bomb(root / "zip_bomb.pt", good)
    files["zip_bomb.pt"] = root / "zip_bomb.pt"
    (root / "dir.pt").mkdir()
    files["dir.pt"] = root / "dir.pt"
    return files


@pytest.fixture(scope="module")
def checkpoint_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    marker = root / "PICKLE_RAN"
    a, b = root / "a.png", root / "b.png"
    a.write_bytes(hostile.real_png(seed=0))
    b.write_bytes(hostile.real_png(seed=1))
    # results a model can give: an untrained one (boxes of any shape, many degenerate) and NaN weights
    untrained = save_tiny_cyws(root / "untrained.pt", seed=3)
    files = _checkpoints(root, marker, untrained)
    ckpt = torch.load(untrained, weights_only=True)
    ckpt["state_dict"] = {k: v.fill_(float("nan")) if v.is_floating_point() else v
                          for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, root / "nan.pt")
    names = sorted(files) + ["untrained.pt", "nan.pt"]
    paths = {**files, "untrained.pt": untrained, "nan.pt": root / "nan.pt"}
    cases = [{"argv": ["detect", a, b, "--method", "cyws", "--model", paths[n], "--engine", "eager",
                       "--out", root / f"out-{n}"], "cwd": root} for n in names]
    results = run_cases(cases, root)
    return {n: (r, root / f"out-{n}") for n, r in zip(names, results)}, marker


CHECKPOINT_ERRORS = ["payload_zip.pt", "payload_raw_pickle.pt", "truncated.pt", "empty.pt", "random.pt",
                     "other_zip.pt", "image_size_16384.pt", "decoder_4096.pt", "max_boxes_1e9.pt",
                     "wrong_weights.pt", "zip_bomb.pt", "dir.pt"]


@pytest.mark.parametrize("name", CHECKPOINT_ERRORS)
def test_hostile_checkpoints_are_one_line(checkpoint_results, name):
    by_name, marker = checkpoint_results
    r, out = by_name[name]
    line = assert_user_error(r["rc"], r["stdout"], r["stderr"], out)
    assert name in line
    assert not marker.exists(), "a pickle payload ran"
    assert r["peak_rss_mb"] < 2500


@pytest.mark.parametrize("name", ["untrained.pt", "nan.pt"])
def test_any_model_output_is_drawn(checkpoint_results, name):
    """An untrained model's boxes (zero-width, reversed, outside the image) and a NaN model's are
    drawn or skipped, never a traceback; the JSON holds only finite boxes."""
    by_name, _ = checkpoint_results
    r, out = by_name[name]
    assert r["rc"] == 0 and "Traceback" not in r["stderr"], r["stderr"][-2000:]
    report = json.loads(next(out.glob("*.json")).read_text())
    for image in report["images"]:
        assert np.isfinite(np.asarray(image["boxes"], dtype=float)).all()
        assert np.isfinite(np.asarray(image["scores"], dtype=float)).all()


def test_degenerate_boxes_are_drawn():
    """What a 1-epoch model emits: zero-width float boxes (x1 == x2 = 5.3: PIL refused x1 < x0 after
    float rounding), reversed, outside, NaN, huge."""
    from spotdiff.render import draw_boxes

    img = np.zeros((50, 80, 3), np.uint8)
    boxes = [[5.3, 5, 5.3, 9], [10.7, 10.2, 10.7, 10.2], [10, 10, 3, 2], [-5, -5, -1, -1], [100, 100, 200, 200],
             [79.9, 49.9, 79.9, 49.9], [0, 0, 0, 0], [np.nan, 1, 2, 3], [-1e300, -1e300, 1e300, 1e300]]
    for box in boxes:
        out = draw_boxes(img, [box], scores=[0.5])
        assert out.shape == img.shape
    assert draw_boxes(img, boxes).shape == img.shape


# ---------------------------------------------------------------- pickled annotations


def test_pickle_payloads_in_npy_and_pkl_do_not_run(tmp_path):
    marker = tmp_path / "PICKLE_RAN"
    arr = np.empty(1, dtype=object)
    arr[0] = hostile._Marker(marker)
    np.save(tmp_path / "meta.npy", arr, allow_pickle=True)
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps({"boxes": hostile._Marker(marker)}))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "meta.npy").read_bytes()[:70])
    for loader, name in [(load_npy_plain, "meta.npy"), (load_pickle_plain, "meta.pkl"), (load_npy_plain, "cut.npy")]:
        with pytest.raises(SpotdiffError) as info:
            loader(tmp_path / name)
        assert "\n" not in str(info.value) and name in str(info.value)
    assert not marker.exists()


# ---------------------------------------------------------------- archives


def _zip(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return path


def _tar(path: Path, members: list[tarfile.TarInfo], data: bytes = b"x" * 10) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info in members:
            if info.isfile():
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def _tarinfo(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


def _archive(case: str, tmp: Path) -> Path:
    ok = {"good/a.txt": b"a" * 1000}
    if case == "zip_traversal":
        return _zip(tmp / "t.zip", {**ok, "../escaped.txt": b"x"})
    if case == "zip_absolute":
        return _zip(tmp / "t.zip", {**ok, "/tmp/escaped-spotdiff.txt": b"x"})
    if case == "zip_drive_letter":
        return _zip(tmp / "t.zip", {**ok, "C:\\escaped.txt": b"x"})
    if case == "zip_symlink":
        return _zip(tmp / "t.zip", ok, {"good/link": "/etc/passwd"})
    if case == "zip_bad_crc":
        path = _zip(tmp / "t.zip", {**ok, "good/b.txt": b"hello" * 1000})
        data = bytearray(path.read_bytes())
        i = data.find(b"hellohello")
        data[i + 3] ^= 0xFF
        path.write_bytes(bytes(data))
        return path
    if case == "zip_truncated":
        path = _zip(tmp / "t.zip", {**ok, "good/b.txt": os.urandom(5000)})
        path.write_bytes(path.read_bytes()[:3000])
        return path
    if case == "tar_traversal":
        return _tar(tmp / "t.tar.gz", [_tarinfo("good/a.txt"), _tarinfo("../../escaped.txt")])
    if case == "tar_symlink":
        return _tar(tmp / "t.tar.gz", [_tarinfo("good/a.txt"), _tarinfo("good/l", tarfile.SYMTYPE, "/etc")])
    if case == "tar_hardlink":
        return _tar(tmp / "t.tar.gz", [_tarinfo("good/a.txt"), _tarinfo("good/h", tarfile.LNKTYPE, "/etc/passwd")])
    if case == "tar_device":
        return _tar(tmp / "t.tar.gz", [_tarinfo("good/a.txt"), _tarinfo("good/dev", tarfile.CHRTYPE)])
    if case == "tar_fifo":
        return _tar(tmp / "t.tar.gz", [_tarinfo("good/a.txt"), _tarinfo("good/fifo", tarfile.FIFOTYPE)])
    if case == "tar_truncated":
        path = _tar(tmp / "t.tar.gz", [_tarinfo("good/a.txt"), _tarinfo("good/b.txt")], os.urandom(20000))
        path.write_bytes(path.read_bytes()[:12000])
        return path
    if case == "not_an_archive":
        (tmp / "t.zip").write_bytes(b"<html>503</html>")
        return tmp / "t.zip"
    raise AssertionError(case)


ARCHIVES = ["zip_traversal", "zip_absolute", "zip_drive_letter", "zip_symlink", "zip_bad_crc", "zip_truncated",
            "tar_traversal", "tar_symlink", "tar_hardlink", "tar_device", "tar_fifo", "tar_truncated",
            "not_an_archive"]


@pytest.mark.parametrize("case", ARCHIVES)
def test_hostile_archives_are_refused_and_leave_nothing(tmp_path, case):
    src = tmp_path / "src"
    src.mkdir()
    archive = _archive(case, src)
    dest = tmp_path / "box" / "dest"
    with pytest.raises(SpotdiffError) as info:
        extract_archive(archive, dest)
    assert "\n" not in str(info.value) and str(archive) in str(info.value)
    left = [p for p in dest.rglob("*") if p.is_file() or p.is_symlink()] if dest.exists() else []
    assert left == [], left
    assert not (tmp_path / "box" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/escaped-spotdiff.txt").exists()


# ---------------------------------------------------------------- COCO instances


@pytest.mark.parametrize("drop", ["area", "image_id", "width", "category_id_images"])
def test_coco_instances_missing_a_key_is_one_line(tmp_path, drop):
    instances = {"images": [{"id": 1, "width": 64, "height": 48, "file_name": "1.jpg"}],
                 "annotations": [{"id": 7, "image_id": 1, "area": 100.0, "iscrowd": 0, "category_id": 1,
                                  "bbox": [1, 1, 10, 10], "segmentation": [[1, 1, 11, 1, 11, 11]]}],
                 "categories": [{"id": 1, "name": "thing"}]}
    if drop in ("area", "image_id"):
        del instances["annotations"][0][drop]
    elif drop == "width":
        del instances["images"][0]["width"]
    else:
        instances["images"] = [1, 2, 3]
    with pytest.raises(SpotdiffError) as info:
        select(instances, CocoSourceParams(), tmp_path / "instances.json")
    assert "\n" not in str(info.value) and "instances.json" in str(info.value)
