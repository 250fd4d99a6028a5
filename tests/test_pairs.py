"""The pairs stage: XOR changes, the split by source image, pasted pairs, PairDataset, preview."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from helpers.coco import make_coco_source
from spotdiff.boxes import mask_to_box
from spotdiff.cli import main
from spotdiff.data.coco_inpainted import CocoInpainted, CocoInpaintedWriter, changed_ids
from spotdiff.data.inpaint import run_inpaint
from spotdiff.data.pairs import build_manifest, inpainted_candidates, load_pair_source, split_items
from spotdiff.data.pairs_dataset import PairDataset, collate_pairs
from spotdiff.errors import SpotdiffError
from spotdiff.params import AugmentParams, InpaintParams, PairsParams

PAPER_RECIPE = PairsParams(text_fraction=0.0, parallax_fraction=0.0, relight_fraction=0.0)


@pytest.fixture(scope="module")
def inpainted(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    source = make_coco_source(root / "source", num_images=12)
    run_inpaint(InpaintParams(max_versions=3, dilate_px=2), source, root / "inpainted")
    return root / "inpainted"


@pytest.fixture(scope="module")
def manifest_path(inpainted):
    out = inpainted.parent / "pairs"
    out.mkdir()
    manifest = build_manifest(PAPER_RECIPE.model_copy(update={"val_fraction": 0.25, "pairs_per_image": 3}),
                              inpainted, out)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out / "manifest.json"


@pytest.fixture(scope="module")
def new_kinds_path(inpainted):
    """Text, parallax and relit pairs only (no paper pairs), 4 per item."""
    out = inpainted.parent / "pairs-new-kinds"
    out.mkdir()
    params = PairsParams(val_fraction=0.25, pairs_per_image=4, text_fraction=0.5, parallax_fraction=0.5,
                         relight_fraction=0.5)
    manifest = build_manifest(params, inpainted, out)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out / "manifest.json"


def test_xor_an_object_removed_in_both_is_not_a_change():
    removed = [frozenset(), frozenset({0, 1}), frozenset({1})]
    pairs = {(i, j): set(c) for i, j, c in inpainted_candidates(removed, nonempty={0, 1, 2})}
    assert pairs[(1, 2)] == {0} == pairs[(2, 1)]  # object 1 removed in both: not changed
    assert pairs[(0, 1)] == {0, 1}
    # A pair whose XOR is empty, or holds only objects with empty masks, is never a candidate.
    same = inpainted_candidates([frozenset({2}), frozenset({2})], nonempty={0, 1, 2})
    assert same == []
    assert inpainted_candidates([frozenset(), frozenset({1})], nonempty={0}) == []


def test_manifest_changes_are_the_xor_and_never_empty(manifest_path):
    manifest = json.loads(manifest_path.read_text())
    kinds = set()
    for split in ("train", "val"):
        for entry in manifest["pairs"][split]:
            kinds.add(entry["kind"])
            assert entry["changed"]
            if entry["kind"] == "inpainted":
                assert entry["removed_a"] != entry["removed_b"]
                assert set(entry["changed"]) <= changed_ids(entry["removed_a"], entry["removed_b"])
                assert not set(entry["changed"]) & (set(entry["removed_a"]) & set(entry["removed_b"]))
    assert kinds == {"inpainted", "pasted"}


def test_split_never_leaks_a_source_image(manifest_path, inpainted):
    manifest = json.loads(manifest_path.read_text())
    train, val = set(manifest["splits"]["train"]), set(manifest["splits"]["val"])
    assert train and val and not train & val
    assert train | val == set(CocoInpainted(inpainted).indices)
    for split, items in (("train", train), ("val", val)):
        for entry in manifest["pairs"][split]:
            assert entry["idx"] in items
            if entry["kind"] == "pasted":
                assert entry["donor"] in items and entry["donor"] != entry["idx"]
    for n in (2, 3, 40):
        tr, va = split_items(list(range(n)), 0.05, np.random.default_rng(0))
        assert len(va) >= 1 and len(tr) >= 1 and not set(tr) & set(va) and len(tr) + len(va) == n
    with pytest.raises(SpotdiffError, match="at least 2"):
        split_items([1], 0.05, np.random.default_rng(0))


def test_manifest_is_deterministic(inpainted, tmp_path):
    params = PairsParams(val_fraction=0.25, pairs_per_image=3)
    assert build_manifest(params, inpainted, tmp_path) == build_manifest(params, inpainted, tmp_path)
    first = build_manifest(params, inpainted, tmp_path)
    assert build_manifest(params.model_copy(update={"seed": 1}), inpainted, tmp_path) != first


def test_pasted_pair_differs_only_inside_the_pasted_masks(manifest_path):
    manifest = json.loads(manifest_path.read_text())
    from spotdiff.data.pairs import read_manifest

    _, dataset = read_manifest(manifest_path)
    pasted = [e for e in manifest["pairs"]["train"] if e["kind"] == "pasted"]
    for entry in pasted[:3]:
        a, b, masks = load_pair_source(entry, dataset)
        assert a.shape == b.shape and masks.shape == (len(entry["changed"]),) + a.shape[:2]
        differs = (a != b).any(axis=2)
        assert differs.any() and not (differs & ~masks.any(axis=0)).any()
        original = dataset.load_original(entry["idx"])
        assert np.array_equal(b if entry["swap"] else a, original)


def test_pair_dataset_items_follow_the_contract(manifest_path):
    size = 64
    train = PairDataset(manifest_path, "train", size, AugmentParams(), seed=0)
    val = PairDataset(manifest_path, "val", size, AugmentParams(), seed=0)
    for ds in (train, val):
        for i in range(min(len(ds), 6)):
            item = ds[i]
            assert item["image_a"].shape == (3, size, size) == item["image_b"].shape
            assert item["image_a"].dtype == torch.float32
            assert 0 <= item["image_a"].min() and item["image_a"].max() <= 1
            assert item["boxes_a"].dtype == torch.float32 and item["boxes_a"].shape[1] == 4
            assert len(item["boxes_a"]) == len(item["boxes_b"]) >= 1
            for boxes in (item["boxes_a"], item["boxes_b"]):
                assert (boxes[:, 2:] > boxes[:, :2]).all()
                assert (boxes >= 0).all() and (boxes <= size).all()
            assert isinstance(item["pair_id"], str)
    # val: the same item every time; train: a new augmentation each access.
    assert torch.equal(val[0]["image_a"], val[0]["image_a"])
    assert not torch.equal(train[0]["image_a"], train[0]["image_a"])
    batch = collate_pairs([val[0], val[1 % len(val)]])
    assert batch["image_a"].shape == (2, 3, size, size)
    assert isinstance(batch["boxes_a"], list) and len(batch["pair_ids"]) == 2


def test_working_resolution_keeps_every_change_and_the_boxes(manifest_path):
    """Augmenting at 2×S instead of the source resolution: same objects, boxes within a pixel at S."""
    import cv2

    from spotdiff.data.pairs_dataset import working_resolution

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    b = a.copy()
    masks = np.zeros((2, 200, 300), dtype=bool)
    masks[0, 50:150, 40:200] = True
    masks[1, 101, 250] = True  # one source pixel: a change that area averaging alone would erase
    small_a, small_b, small_masks = working_resolution(a, b, masks, 128)
    assert small_a.shape == small_b.shape == (85, 128, 3)
    assert np.array_equal(small_a, cv2.resize(a, (128, 85), interpolation=cv2.INTER_AREA))
    assert small_masks.shape == (2, 85, 128) and small_masks[1].any()
    assert abs(small_masks[0].sum() / masks[0].sum() - (128 / 300) ** 2) < 0.02
    for side in (0, 300, 400):  # off, or the source is already small enough: untouched
        same = working_resolution(a, b, masks, side)
        assert same[0] is a and same[2] is masks

    # the fixture images are 64×80: at S = 24 the working frame is 48 px long, the source 80
    off = PairDataset(manifest_path, "val", 24, AugmentParams(enabled=False, work_scale=0), seed=0)
    on = PairDataset(manifest_path, "val", 24, AugmentParams(enabled=False, work_scale=2.0), seed=0)
    for i in range(len(off)):
        x, y = off[i], on[i]
        assert len(x["boxes_a"]) == len(y["boxes_a"]) and len(x["boxes_b"]) == len(y["boxes_b"])
        assert (x["boxes_a"] - y["boxes_a"]).abs().max() <= 1.0
        assert (x["image_a"] - y["image_a"]).abs().mean() < 0.05


def test_pairs_cli_writes_manifest_and_preview(inpainted, tmp_path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"pairs": {"preview_count": 3, "val_fraction": 0.2, "pairs_per_image": 2},
                                           "model": {"image_size": 64}}))
    out = tmp_path / "pairs"
    args = ["pairs", "--params", str(params_file), "--inpainted", str(inpainted), "--out", str(out)]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["train"] > 0 and manifest["counts"]["val"] > 0
    import cv2

    preview = cv2.imread(str(out / "preview.png"))
    assert preview.shape[1] == 2 * 64 + 4 and preview.shape[0] == 3 * 64 + 2 * 4
    # A folder the inpaint stage did not finish is refused with one line.
    broken = tmp_path / "broken"
    CocoInpaintedWriter(broken)
    assert main(["pairs", "--params", str(params_file), "--inpainted", str(broken), "--out", str(out)]) == 2


def test_decoded_image_cache_gives_the_same_pixels_and_cannot_be_painted_on(inpainted):
    """The reader keeps decoded images (training reads each many times); what it hands out is a copy."""
    cached, plain = CocoInpainted(inpainted), CocoInpainted(inpainted, cache_mb=0)
    idx = cached.indices[0]
    first = cached.load_original(idx)
    first[:] = 0  # a caller painting on its image (as the paste does) must not reach the cache
    again = cached.load_original(idx)
    assert np.array_equal(again, plain.load_original(idx)) and again.any()
    assert len(cached._images) == 1 and len(plain._images) == 0
    version = cached.versions(idx)[0]
    assert np.array_equal(cached.load_inpainted(version), plain.load_inpainted(version))
    # The cap holds: a cache smaller than one image keeps nothing.
    tiny = CocoInpainted(inpainted, cache_mb=0)
    tiny.load_original(idx)
    assert tiny._image_bytes == 0


# ---------------------------------------------------------------- kinds beyond the paper's recipe


def test_paper_recipe_draws_the_same_pairs_whatever_the_new_kinds_would(inpainted, tmp_path):
    """With the three fractions at 0 only inpainted / pasted pairs come out, none relit; and they are the
    very pairs the paper recipe drew before the new kinds existed (their draws use another stream)."""
    paper = build_manifest(PAPER_RECIPE.model_copy(update={"pairs_per_image": 3}), inpainted, tmp_path)
    kinds = {e["kind"] for split in paper["pairs"].values() for e in split}
    assert kinds <= {"inpainted", "pasted"} and not any("relight" in e for e in paper["pairs"]["train"])
    relit = build_manifest(PAPER_RECIPE.model_copy(update={"pairs_per_image": 3, "relight_fraction": 1.0}),
                           inpainted, tmp_path)
    strip = [{k: v for k, v in e.items() if k != "relight"} for e in relit["pairs"]["train"]]
    assert strip == paper["pairs"]["train"] and all("relight" in e for e in relit["pairs"]["train"])


def test_new_kinds_are_drawn_and_reproducible(new_kinds_path, inpainted, tmp_path):
    from spotdiff.data.pairs import read_manifest

    manifest = json.loads(new_kinds_path.read_text())
    entries = manifest["pairs"]["train"] + manifest["pairs"]["val"]
    assert {e["kind"] for e in entries} == {"text", "parallax"}
    assert any("relight" in e for e in entries) and not all("relight" in e for e in entries)
    params = PairsParams(**manifest["params"])
    assert build_manifest(params, inpainted, tmp_path)["pairs"] == manifest["pairs"]
    _, dataset = read_manifest(new_kinds_path)
    for entry in entries[:8]:  # the same entry loads to the same bytes
        first, again = load_pair_source(entry, dataset), load_pair_source(entry, dataset)
        assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
        for m1, m2 in zip(first[2] if isinstance(first[2], tuple) else [first[2]],
                          again[2] if isinstance(again[2], tuple) else [again[2]]):
            assert np.array_equal(m1, m2)


def test_text_pair_differs_only_at_the_words_which_are_the_boxes(new_kinds_path):
    import cv2

    from spotdiff.data.pairs import read_manifest

    manifest, dataset = read_manifest(new_kinds_path)
    texts = [e for e in manifest["pairs"]["train"] if e["kind"] == "text" and "relight" not in e]
    assert texts
    for entry in texts[:4]:
        a, b, words = load_pair_source(entry, dataset)
        assert words.shape == (len(entry["changed"]),) + a.shape[:2] and words.any(axis=(1, 2)).all()
        base = dataset.load_removed(entry["idx"], entry["base"])
        assert np.array_equal(b if entry["swap"] else a, base)
        differs = (a != b).any(axis=2)
        # anti-aliased stroke edges below the mask's threshold may differ within a pixel of it
        near = cv2.dilate(words.any(axis=0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        assert differs.any() and not (differs & ~near).any()
    # through the dataset (no augmentation, source resolution): one box per word, its glyphs' tight box
    ds = PairDataset(new_kinds_path, "train", 80, AugmentParams(enabled=False, work_scale=0), seed=0)
    index = manifest["pairs"]["train"].index(texts[0])
    item = ds[index]
    _, _, words = load_pair_source(texts[0], dataset)
    h, w = words.shape[1:]
    want = np.array([mask_to_box(m) for m in words]) * np.array([80 / w, 80 / h] * 2)
    np.testing.assert_allclose(item["boxes_a"].numpy(), want, atol=1e-4)
    np.testing.assert_allclose(item["boxes_b"].numpy(), want, atol=1e-4)


def test_parallax_pair_boxes_each_view_and_nothing_else_changed_is_boxed(new_kinds_path):
    """Each image's boxes are its own masks' tight boxes (the views have no shared frame); every changed
    card shows in both views; the views differ outside the changed cards too (parallax)."""
    from spotdiff.data.pairs import read_manifest

    manifest, dataset = read_manifest(new_kinds_path)
    plain = [e for e in manifest["pairs"]["train"] if e["kind"] == "parallax" and "relight" not in e]
    assert plain
    ds = PairDataset(new_kinds_path, "train", 80, AugmentParams(enabled=False, work_scale=0), seed=0)
    moved_elsewhere = 0
    for entry in plain[:4]:
        a, b, (masks_a, masks_b) = load_pair_source(entry, dataset)
        assert masks_a.shape == masks_b.shape == (len(entry["changed"]),) + a.shape[:2]
        assert masks_a.any(axis=(1, 2)).all() and masks_b.any(axis=(1, 2)).all()
        unchanged = ~(masks_a.any(axis=0) | masks_b.any(axis=0))
        moved_elsewhere += int((np.abs(a.astype(int) - b.astype(int)).sum(2)[unchanged] > 60).sum())
        item = ds[manifest["pairs"]["train"].index(entry)]
        h, w = a.shape[:2]
        scale = np.array([80 / w, 80 / h] * 2)
        for boxes, masks in ((item["boxes_a"], masks_a), (item["boxes_b"], masks_b)):
            want = np.array([mask_to_box(m) for m in masks]) * scale
            np.testing.assert_allclose(boxes.numpy(), want, atol=1e-4)
    assert moved_elsewhere > 0


def test_relit_pair_keeps_the_masks_and_relights_one_image(new_kinds_path):
    from spotdiff.data.pairs import read_manifest

    manifest, dataset = read_manifest(new_kinds_path)
    relit = [e for e in manifest["pairs"]["train"] if e["kind"] == "text" and "relight" in e]
    assert relit
    entry = relit[0]
    a, b, masks = load_pair_source(entry, dataset)
    a0, b0, masks0 = load_pair_source({k: v for k, v in entry.items() if k != "relight"}, dataset)
    assert np.array_equal(masks, masks0)
    same = [np.array_equal(a, a0), np.array_equal(b, b0)]
    assert sorted(same) == [False, True]  # exactly one image was relit


def test_new_kinds_follow_the_dataset_contract(new_kinds_path):
    size = 64
    ds = PairDataset(new_kinds_path, "train", size, AugmentParams(), seed=0, deterministic=True)
    for i in range(min(len(ds), 12)):
        item = ds[i]
        assert item["image_a"].shape == (3, size, size) == item["image_b"].shape
        assert len(item["boxes_a"]) == len(item["boxes_b"]) >= 1
        for boxes in (item["boxes_a"], item["boxes_b"]):
            assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes >= 0).all() and (boxes <= size).all()
        assert torch.equal(ds[i]["image_a"], item["image_a"])  # deterministic: same bytes again
