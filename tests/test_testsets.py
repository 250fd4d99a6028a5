"""Test-set readers on fixtures laid out in the published formats, refusal of malformed and unsafe files,
the SHA512-verified download (a local server; archive extraction itself: test_download.py), the
stand-ins round-tripping through the readers, and the `spotdiff testsets` command."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from spotdiff.boxes import mask_to_box
from spotdiff.data.testsets import (
    CocoInpaintedTest,
    KubricChange,
    SynthtextChange,
    ViratStd,
    download,
    find_testsets,
    open_testset,
)
from spotdiff.errors import SpotdiffError


def rand_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), image)


# ---------------------------------------------------------------- Synthtext-Change


def make_synthtext(root: Path, h5_name="custom.h5") -> dict:
    (root / "bg_img").mkdir(parents=True)
    write_png(root / "bg_img" / "ant+hill_1.png", rand_image(80, 120, 1))  # other size: resized
    write_png(root / "bg_img" / "street.png", rand_image(40, 60, 2))
    text1, text2 = rand_image(40, 60, 3), rand_image(40, 60, 4)
    # word 0: a rotated quad; word 1: axis-aligned; corners clockwise from top-left, 2×4×N
    bb = np.array([[[5, 12], [20, 30], [22, 30], [7, 12]],  # x of the 4 corners, per word
                   [[3, 10], [5, 10], [15, 18], [13, 18]]], dtype=np.float32)
    with h5py.File(root / h5_name, "w") as f:
        d = f.create_group("data")
        d.create_dataset("ant+hill_1.jpg_0", data=text1)
        d["ant+hill_1.jpg_0"].attrs["wordBB"] = bb
        d.create_dataset("street.jpg_0", data=text2)
        d["street.jpg_0"].attrs["wordBB"] = np.array([[2, 9, 9, 2], [1, 1, 6, 6]], np.float32)  # 1 word
    return {"ant+hill_1.jpg_0": [[5, 3, 22, 15], [12, 10, 30, 18]], "street.jpg_0": [[2, 1, 9, 6]]}


def test_synthtext_reader(tmp_path):
    expected = make_synthtext(tmp_path)
    ts = open_testset(tmp_path)
    assert isinstance(ts, SynthtextChange) and not ts.is_standin
    assert ts.pair_ids == sorted(expected)
    for pair in ts:
        assert pair.image_a.shape == pair.image_b.shape == (40, 60, 3) and pair.image_a.dtype == np.uint8
        np.testing.assert_allclose(pair.boxes_a, expected[pair.pair_id])
        np.testing.assert_allclose(pair.boxes_b, expected[pair.pair_id])


def test_synthtext_malformed(tmp_path):
    make_synthtext(tmp_path)
    os.remove(tmp_path / "bg_img" / "street.png")
    with pytest.raises(SpotdiffError, match=r"bg_img.*street.*custom\.h5"):
        SynthtextChange(tmp_path)
    write_png(tmp_path / "bg_img" / "street.png", rand_image(40, 60))
    with h5py.File(tmp_path / "custom.h5", "a") as f:
        f["data"]["street.jpg_0"].attrs["wordBB"] = np.zeros((3, 4, 1))
    ts = SynthtextChange(tmp_path)
    with pytest.raises(SpotdiffError, match=r"custom\.h5 data/street\.jpg_0.*wordBB"):
        ts[1]
    (tmp_path / "custom.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(SpotdiffError, match=r"custom\.h5"):
        SynthtextChange(tmp_path)


# ---------------------------------------------------------------- VIRAT-STD


def make_virat(root: Path) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    boxes = {"0001": [[1, 2, 11, 12], [20, 5, 30, 25]], "0002": [[0, 0, 5, 5]], "0003": []}
    for k in boxes:
        write_png(root / f"{k}.png", rand_image(32, 48, 5))
        write_png(root / f"{k}_2.png", rand_image(32, 48, 6))
    np.save(root / "annotations.npy", np.array(boxes, dtype=object), allow_pickle=True)
    return boxes


def test_virat_reader(tmp_path):
    expected = make_virat(tmp_path)
    ts = open_testset(tmp_path)
    assert isinstance(ts, ViratStd) and ts.pair_ids == ["0001", "0002", "0003"]
    for pair in ts:
        want = np.asarray(expected[pair.pair_id], float).reshape(-1, 4)
        np.testing.assert_array_equal(pair.boxes_a, want)
        np.testing.assert_array_equal(pair.boxes_b, want)
        assert pair.image_a.shape == (32, 48, 3)


def test_virat_malformed(tmp_path):
    make_virat(tmp_path)
    np.save(tmp_path / "annotations.npy", np.array([[1, 2, 3, 4]]))
    with pytest.raises(SpotdiffError, match=r"annotations\.npy.*dict"):
        ViratStd(tmp_path)
    np.save(tmp_path / "annotations.npy", np.array({"0001": [[1, 2, 3]]}, dtype=object), allow_pickle=True)
    with pytest.raises(SpotdiffError, match=r"annotations\.npy.*0001"):
        ViratStd(tmp_path)
    (tmp_path / "annotations.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(SpotdiffError, match=r"annotations\.npy"):
        ViratStd(tmp_path)
    make_virat(tmp_path)
    os.remove(tmp_path / "0002_2.png")
    with pytest.raises(SpotdiffError, match=r"0002_2\.png"):
        ViratStd(tmp_path)[1]


class Exploit:
    """Unpickling this runs a shell command — what a hostile annotations.npy could contain."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Plain:
    pass


@pytest.mark.parametrize("payload", ["reduce", "instance"])
def test_virat_refuses_non_plain_pickles(tmp_path, payload):
    make_virat(tmp_path)
    marker = tmp_path / "pwned"
    obj = {"0001": Exploit(marker)} if payload == "reduce" else {"0001": Plain()}
    np.save(tmp_path / "annotations.npy", np.array(obj, dtype=object), allow_pickle=True)
    with pytest.raises(SpotdiffError, match=r"annotations\.npy"):
        ViratStd(tmp_path)
    assert not marker.exists()


# ---------------------------------------------------------------- Kubric-Change


def make_kubric(root: Path, rgb_mask=False) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    m0 = np.zeros((20, 30), np.uint8)
    m0[2:5, 3:7] = 255
    m0[10:12, 20:25] = 255
    m0[12, 25] = 255  # touches the previous blob only diagonally: a separate 4-connected component
    m1 = np.zeros((20, 30), np.uint8)
    m1[5:15, 8:12] = 255
    for idx in ("7", "12"):
        write_png(root / f"{idx}_0.png", rand_image(20, 30, 7))
        write_png(root / f"{idx}_1.png", rand_image(20, 30, 8))
        for k, m in ((0, m0), (1, m1)):
            write_png(root / f"mask_{idx}_0000{k}.png", np.repeat(m[..., None], 3, 2) if rgb_mask else m)
    return {"a": [[3, 2, 7, 5], [20, 10, 25, 12], [25, 12, 26, 13]], "b": [[8, 5, 12, 15]]}


@pytest.mark.parametrize("rgb_mask", [False, True])
def test_kubric_reader(tmp_path, rgb_mask):
    expected = make_kubric(tmp_path, rgb_mask)
    ts = open_testset(tmp_path)
    assert isinstance(ts, KubricChange) and ts.pair_ids == ["7", "12"]  # numeric order
    pair = ts[0]
    assert sorted(pair.boxes_a.tolist()) == sorted(expected["a"])
    assert pair.boxes_b.tolist() == expected["b"]


def test_kubric_malformed(tmp_path):
    make_kubric(tmp_path)
    os.remove(tmp_path / "mask_12_00001.png")
    with pytest.raises(SpotdiffError, match=r"mask_12_00001\.png"):
        KubricChange(tmp_path)
    make_kubric(tmp_path)
    write_png(tmp_path / "mask_7_00000.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(SpotdiffError, match=r"mask_7_00000\.png"):
        KubricChange(tmp_path)[0]
    (tmp_path / "mask_7_00000.png").write_bytes(b"junk")
    with pytest.raises(SpotdiffError, match=r"mask_7_00000\.png"):
        KubricChange(tmp_path)[0]


# ---------------------------------------------------------------- COCO-Inpainted test subset


def make_coco_inpainted(root: Path, aug: dict | None = None) -> None:
    """§4 layout written by hand: images_and_masks/, inpainted/<idx>_mask<bits>.png, metadata/, index."""
    import torch

    root.mkdir(parents=True, exist_ok=True)
    original = np.full((40, 50, 3), 90, np.uint8)
    original[10:20, 20:30] = 250  # annotation 1 (removed)
    original[25:35, 5:12] = 10  # annotation 0 (kept)
    inpainted = original.copy()
    inpainted[10:20, 20:30] = 90
    write_png(root / "images_and_masks" / "3.png", original)
    write_png(root / "inpainted" / "3_mask01.png", inpainted)
    anns = np.empty(2, dtype=object)
    anns[0] = {"bbox": [5, 25, 7, 10], "segmentation": [[5, 25, 12, 25, 12, 35, 5, 35]], "category_id": 1}
    anns[1] = {"bbox": [20, 10, 10, 10], "segmentation": [[20, 10, 30, 10, 30, 20, 20, 20]], "category_id": 2}
    (root / "metadata").mkdir()
    np.save(root / "metadata" / "3.npy", anns, allow_pickle=True)
    np.save(root / "list_of_indices.npy", np.array([3]))
    if aug is not None:
        for kind in ("original", "inpainted"):
            (root / "test_augmentations" / kind).mkdir(parents=True, exist_ok=True)
            torch.save(aug[kind], root / "test_augmentations" / kind / "3.params")


def test_coco_inpainted_reader_plain_and_augmented(tmp_path):
    import torch

    from spotdiff.data.transforms import identity_params

    make_coco_inpainted(tmp_path / "plain")
    ts = open_testset(tmp_path / "plain", "coco_inpainted_small")
    assert isinstance(ts, CocoInpaintedTest) and ts.pair_ids == ["3"]
    pair = ts[0]
    assert pair.boxes_a.tolist() == pair.boxes_b.tolist() == [[20, 10, 30, 20]]
    assert pair.image_a[15, 25].tolist() == [250] * 3 and pair.image_b[15, 25].tolist() == [90] * 3

    shifted = identity_params(40, 50)
    shifted["aff"]["translations"] = torch.tensor([[6.0, 0.0]])
    make_coco_inpainted(tmp_path / "aug", {"original": shifted, "inpainted": identity_params(40, 50)})
    pair = open_testset(tmp_path / "aug")[0]
    assert pair.boxes_a.tolist() == [[26, 10, 36, 20]]  # moved with its image
    assert pair.boxes_b.tolist() == [[20, 10, 30, 20]]
    assert pair.image_a[15, 33].tolist() == [250] * 3

    legacy = identity_params(40, 50)  # older kornia: shears named sx / sy, no batch_prob
    legacy["aff"]["sx"] = legacy["aff"].pop("shear_x")
    legacy["aff"]["sy"] = legacy["aff"].pop("shear_y")
    for part in ("aff", "jit"):
        del legacy[part]["batch_prob"]
    legacy["aff"]["translations"] = torch.tensor([[6.0, 0.0]])
    make_coco_inpainted(tmp_path / "legacy", {"original": legacy, "inpainted": identity_params(40, 50)})
    assert open_testset(tmp_path / "legacy")[0].boxes_a.tolist() == [[26, 10, 36, 20]]

    empty = {"aff": {}, "jit": {}}
    make_coco_inpainted(tmp_path / "bad", {"original": empty, "inpainted": empty})
    with pytest.raises(SpotdiffError, match=r"3\.params"):
        open_testset(tmp_path / "bad")[0]


def test_coco_inpainted_refuses_hostile_metadata(tmp_path):
    make_coco_inpainted(tmp_path)
    marker = tmp_path / "pwned"
    arr = np.empty(1, dtype=object)
    arr[0] = Exploit(marker)
    np.save(tmp_path / "metadata" / "3.npy", arr, allow_pickle=True)
    with pytest.raises(SpotdiffError, match=r"metadata/3\.npy"):
        open_testset(tmp_path)[0]
    assert not marker.exists()


def test_open_testset_unknown_layout(tmp_path):
    with pytest.raises(SpotdiffError, match="not a test-set folder"):
        open_testset(tmp_path)


# ---------------------------------------------------------------- download


def tar_of(folder: Path, arcname: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(folder, arcname=arcname)
    return buf.getvalue()


def publish(www: Path, files: dict[str, bytes], sums: dict[str, bytes] | None = None) -> None:
    (www / "cyws").mkdir(exist_ok=True)
    lines = []
    for name, data in files.items():
        (www / "cyws" / name).write_bytes(data)
        lines.append(f"{hashlib.sha512((sums or files)[name]).hexdigest()}  {name}")
    (www / "cyws" / "SHA512SUMS").write_text("\n".join(lines) + "\n")


def test_download_verifies_and_extracts(tmp_path, http_server):
    www, url = http_server.root, f"{http_server.url}/cyws"
    make_virat(tmp_path / "src" / "virat")
    publish(www, {"virat.tar.gz": tar_of(tmp_path / "src" / "virat", "VIRAT-STD")})
    paths = download(url, tmp_path / "out", cache=tmp_path / "cache")
    assert [p.name for p in paths] == ["virat.tar.gz"]
    found = find_testsets(tmp_path / "out")
    assert list(found) == ["virat_std"] and len(open_testset(found["virat_std"])) == 3
    # a cached archive is re-verified, not fetched again
    (www / "cyws" / "virat.tar.gz").unlink()
    download(url, tmp_path / "out2", cache=tmp_path / "cache")
    assert (tmp_path / "out2" / "VIRAT-STD" / "annotations.npy").is_file()


def test_download_rejects_bad_checksum(tmp_path, http_server):
    www, url = http_server.root, f"{http_server.url}/cyws"
    make_virat(tmp_path / "src")
    publish(www, {"virat.tar.gz": tar_of(tmp_path / "src", "v")}, sums={"virat.tar.gz": b"other bytes"})
    with pytest.raises(SpotdiffError, match=r"virat\.tar\.gz: SHA512 mismatch"):
        download(url, tmp_path / "out", cache=tmp_path / "cache")
    assert not (tmp_path / "cache" / "virat.tar.gz").exists() and not (tmp_path / "out" / "v").exists()
    with pytest.raises(SpotdiffError, match="no checksum for missing.zip"):
        download(url, tmp_path / "out", ["missing.zip"], cache=tmp_path / "cache")
    with pytest.raises(SpotdiffError, match="official_base_url"):
        download("", tmp_path / "out")


# ---------------------------------------------------------------- stand-ins


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    from spotdiff.data import standins as st

    root = tmp_path_factory.mktemp("standins")
    truth = {
        "coco_inpainted_medium": st.write_coco_inpainted_standin(root / "coco" / "medium", "medium",
                                                                 3, 128, 5),
        "synthtext_change": st.write_synthtext_standin(root / "synth", 3, 128, 5),
        "virat_std": st.write_virat_standin(root / "virat", 3, 128, 5),
        "kubric_change": st.write_kubric_standin(root / "kubric", 3, 128, 5),
    }
    return root, truth


def inside_vs_outside_diff(pair, relight=False):
    a, b = pair.image_a.astype(float), pair.image_b.astype(float)
    if relight:  # undo a global lighting change: per-channel quadratic fit of b on a over the image
        for c in range(3):
            coef = np.polyfit(a[..., c].ravel(), b[..., c].ravel(), 2)
            a[..., c] = np.polyval(coef, a[..., c])
    diff = np.abs(a - b).sum(2)
    inside = np.zeros(diff.shape, bool)
    for x1, y1, x2, y2 in pair.boxes_a.astype(int):
        inside[y1:y2, x1:x2] = True
    return diff[inside].mean(), diff[~inside].mean()


def test_standins_are_found_and_marked(standins):
    root, _ = standins
    found = find_testsets(root)
    assert set(found) == {"coco_inpainted_medium", "synthtext_change", "virat_std", "kubric_change"}
    for name, path in found.items():
        ts = open_testset(path, name)
        assert ts.is_standin and ts.display_name.endswith("(stand-in)") and len(ts) == 3
        assert "STAND-IN" in (path / "STANDIN.txt").read_text()


def test_standin_synthtext_and_virat_boxes_are_the_changes(standins):
    root, truth = standins
    for name, folder in (("synthtext_change", "synth"), ("virat_std", "virat")):
        for pair in open_testset(root / folder):
            np.testing.assert_allclose(pair.boxes_a, truth[name][pair.pair_id])
            assert np.array_equal(pair.boxes_a, pair.boxes_b) and len(pair.boxes_a) >= 1
            inside, outside = inside_vs_outside_diff(pair, relight=name == "virat_std")
            assert inside > 2 * outside + 5, (name, pair.pair_id, inside, outside)


def test_standin_kubric_boxes_are_the_changed_objects(standins):
    root, truth = standins
    for pair in open_testset(root / "kubric"):
        for boxes, masks in zip((pair.boxes_a, pair.boxes_b), truth["kubric_change"][pair.pair_id]):
            assert len(masks) >= 1 and len(boxes) >= len(masks)
            object_boxes = [mask_to_box(m) for m in masks]
            for box in boxes:  # every component box lies within one changed object's box
                assert any((box[:2] >= ob[:2]).all() and (box[2:] <= ob[2:]).all() for ob in object_boxes)


def test_standin_coco_inpainted_boxes(standins):
    root, truth = standins
    raw = CocoInpaintedTest(root / "coco" / "medium", apply_augmentation=False)
    for pair in raw:
        want = [mask_to_box(m).tolist() for m in truth["coco_inpainted_medium"][pair.pair_id]]
        assert sorted(pair.boxes_a.tolist()) == sorted(want)
        inside, outside = inside_vs_outside_diff(pair)
        assert inside > 2 * outside + 5
    n_boxes = 0
    for pair in open_testset(root / "coco" / "medium"):  # with the stored test augmentation
        assert len(pair.boxes_a) == len(pair.boxes_b) <= len(truth["coco_inpainted_medium"][pair.pair_id])
        n_boxes += len(pair.boxes_a)
        assert not np.array_equal(pair.image_a, raw[int(pair.pair_id)].image_a)  # augmented
        for boxes in (pair.boxes_a, pair.boxes_b):
            assert ((boxes >= 0) & (boxes <= 128)).all()
    assert n_boxes >= 3  # the generator resampled until every pair keeps a visible change


def test_standins_are_deterministic(tmp_path):
    from spotdiff.data import standins as st

    st.write_virat_standin(tmp_path / "a", 2, 96, 9)
    st.write_virat_standin(tmp_path / "b", 2, 96, 9)
    for name in ("0000.png", "0001_2.png", "annotations.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


# ---------------------------------------------------------------- the command


def test_testsets_command(tmp_path):
    from spotdiff.cli import main

    params = tmp_path / "params.yaml"
    params.write_text("testsets:\n  pairs_per_set: 1\n  image_size: 64\n")
    out = tmp_path / "data" / "testsets"
    assert main(["testsets", "--params", str(params), "--out", str(out)]) == 0
    listing = json.loads((out / "testsets.json").read_text())
    assert listing["source"] == "standin"
    assert [s["name"] for s in listing["sets"]] == [
        "coco_inpainted_large", "coco_inpainted_medium", "coco_inpainted_small", "kubric_change",
        "synthtext_change", "virat_std"]
    assert all(s["is_standin"] and s["pairs"] == 1 for s in listing["sets"])
    assert not list(out.parent.glob(".testsets.partial-*"))

    params.write_text("testsets:\n  source: official\n")
    assert main(["testsets", "--params", str(params), "--out", str(out)]) == 2  # no base URL
    assert (out / "testsets.json").is_file()  # the previous output is untouched


# ---------------------------------------------------------------- no-change pairs and what the stand-ins test


@pytest.fixture(scope="module")
def half_unchanged(tmp_path_factory):
    """Each stand-in kind with 4 pairs, of which pairs 1 and 3 have no change (no_change_fraction 0.5)."""
    from spotdiff.data import standins as st

    root = tmp_path_factory.mktemp("no-change")
    st.write_coco_inpainted_standin(root / "coco", "medium", 4, 96, 3, 0.5)
    st.write_synthtext_standin(root / "synth", 4, 96, 3, 0.5)
    st.write_virat_standin(root / "virat", 4, 96, 3, 0.5)
    st.write_kubric_standin(root / "kubric", 4, 96, 3, 0.5)
    return root


def test_no_change_pairs_round_trip_in_each_format(half_unchanged):
    root = half_unchanged
    names = {p.name.split("_")[0]: p.name for p in (root / "coco" / "inpainted").iterdir()}
    assert set(names["1"][len("1_mask"):-len(".png")]) == {"0"}  # <bits> all zeros: nothing removed
    assert "1" in names["0"][len("0_mask"):]
    with h5py.File(root / "synth" / "synthtext-change.h5") as f:
        assert f["data"]["standin_0001.png_0"].attrs["wordBB"].shape == (2, 4, 0)
    from spotdiff.data.safe_pickle import load_npy_plain

    assert load_npy_plain(root / "virat" / "annotations.npy").item()["0001"] == []
    assert not cv2.imread(str(root / "kubric" / "mask_1_00000.png")).any()
    for folder in ("coco", "synth", "virat", "kubric"):
        ts = open_testset(root / folder)
        flags = [pair.no_change for pair in ts]
        assert flags == [False, True, False, True], folder
        for pair in ts:
            assert (len(pair.boxes_a) == 0 and len(pair.boxes_b) == 0) == pair.no_change, folder
            if pair.no_change and folder != "synth":  # the nuisance stays: the two images differ
                assert not np.array_equal(pair.image_a, pair.image_b), folder


def _residue_after_best_homography(image_0, image_1, pts_0, pts_1):
    """Grey-level |difference| after warping view 0 onto view 1 by the least-squares homography of the
    true correspondences, and where that warp has pixels."""
    hom, _ = cv2.findHomography(pts_0, pts_1, 0)
    h, w = image_1.shape[:2]
    warped = cv2.warpPerspective(image_0, hom, (w, h))
    inside = cv2.warpPerspective(np.ones((h, w), np.uint8), hom, (w, h), flags=cv2.INTER_NEAREST) > 0
    grey = [cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).astype(int) for x in (warped, image_1)]
    return np.abs(grey[0] - grey[1]), inside, hom


def test_kubric_standin_has_parallax_no_single_homography_aligns_it():
    """An unchanged layered scene from two camera centres (the Kubric stand-in's renderer): the best
    single homography between the views, fitted to true correspondences of every plane, leaves
    changed-looking residue where nothing changed. The same check on one plane (the old stand-in's
    single homography per view) leaves none."""
    from spotdiff.data.embedded import background, paste_random_object
    from spotdiff.data.parallax import (
        Camera,
        Card,
        Scene,
        card_homography,
        intrinsics,
        plane_homography,
        render_view,
    )

    rng = np.random.default_rng(0)
    size = 128
    floor = background(rng, size, size)
    cards = []
    for depth in (0.5, 0.6, 0.45):
        canvas = floor.copy()
        mask = paste_random_object(rng, canvas, category_id=2, size=(34, 34))
        cards.append(Card(canvas, mask, depth))
    normal, distance = np.array([0.0, 0.2, 1.0]) / np.hypot(0.2, 1.0), 1 / np.hypot(0.2, 1.0)
    scene = Scene(floor, normal, distance, cards)
    cameras = (Camera(np.eye(3), np.array([-0.03, 0.0, 0.0])), Camera(np.eye(3), np.array([0.04, 0.01, 0.0])))
    (image_0, vis_0), (image_1, vis_1) = (render_view(scene, cam, v) for v, cam in enumerate(cameras))
    k = intrinsics(size, size)
    grid = np.stack(np.meshgrid(np.arange(4, size, 6), np.arange(4, size, 6)), -1).reshape(-1, 2).astype(float)
    pts_0, pts_1 = [], []
    layers = [([plane_homography(normal, distance, c, k) for c in cameras], None)]
    layers += [([card_homography(c.depth, cam, k) for cam in cameras], i) for i, c in enumerate(cards)]
    for (h0, h1), card in layers:
        ref = cv2.perspectiveTransform(grid[None], np.linalg.inv(h0))[0]  # view-0 grid -> reference frame
        p1 = cv2.perspectiveTransform(ref[None], h1)[0]
        xi, yi = grid.astype(int).T
        x1, y1 = np.round(p1).astype(int).T
        ok = (x1 >= 0) & (x1 < size) & (y1 >= 0) & (y1 < size)
        on = np.zeros(len(grid), bool)
        seen_0 = vis_0[card] if card is not None else ~np.any(vis_0, axis=0)
        seen_1 = vis_1[card] if card is not None else ~np.any(vis_1, axis=0)
        on[ok] = seen_0[yi[ok], xi[ok]] & seen_1[y1[ok], x1[ok]]
        pts_0.append(grid[on])
        pts_1.append(p1[on])
    assert all(len(p) >= 4 for p in pts_0)  # every plane contributes
    residue, inside, hom = _residue_after_best_homography(image_0, image_1, np.concatenate(pts_0),
                                                          np.concatenate(pts_1))
    reprojection = np.linalg.norm(cv2.perspectiveTransform(np.concatenate(pts_0)[None], hom)[0]
                                  - np.concatenate(pts_1), axis=1)
    assert reprojection.max() > 3  # some static point is off by more than 3 px
    changed_looking = (residue > 40) & inside
    _, _, stats, _ = cv2.connectedComponentsWithStats(changed_looking.astype(np.uint8))
    assert changed_looking.mean() > 0.02 and stats[1:, cv2.CC_STAT_AREA].max() >= 20

    # control: the back plane alone (one homography per view, as the old stand-in) aligns exactly
    flat = Scene(floor, normal, distance, [])
    plain_0, _ = render_view(flat, cameras[0], 0)
    plain_1, _ = render_view(flat, cameras[1], 1)
    p0, p1 = pts_0[0], pts_1[0]
    residue, inside, _ = _residue_after_best_homography(plain_0, plain_1, p0, p1)
    core = inside & (cv2.erode(inside.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0)
    assert ((residue > 40) & core).mean() < 0.002


def test_virat_standin_light_is_local(half_unchanged):
    """On a no-change VIRAT pair, the best global per-channel tone curve (what a colour fit undoes)
    leaves a large region still far off: the light changed locally."""
    ts = open_testset(half_unchanged / "virat")
    worst = 0.0
    for pair in ts:
        if not pair.no_change:
            continue
        a, b = pair.image_a.astype(float), pair.image_b.astype(float)
        fitted = a.copy()
        for c in range(3):
            fitted[..., c] = np.polyval(np.polyfit(a[..., c].ravel(), b[..., c].ravel(), 2), a[..., c])
        worst = max(worst, float((np.abs(fitted - b).sum(2) > 45).mean()))
    assert worst > 0.05
