"""The inpaint stage and the COCO-Inpainted format: bits, safe unpickling, backends, resuming."""

from __future__ import annotations

import itertools
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from helpers.coco import make_coco_source
from spotdiff.cli import main
from spotdiff.data.coco_inpainted import (
    CocoInpainted,
    CocoInpaintedWriter,
    changed_ids,
    format_bits,
    parse_bits,
)
from spotdiff.data.inpaint import (
    LamaInpainter,
    OpenCVInpainter,
    dilate,
    plan_removals,
    read_source,
    run_inpaint,
)
from spotdiff.data.safe_pickle import load_npy_plain, load_pickle_plain
from spotdiff.errors import SpotdiffError
from spotdiff.imageio import load_image
from spotdiff.params import InpaintParams

# ---------------------------------------------------------------- <bits>


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_bits_round_trip_for_every_subset(n):
    for k in range(n + 1):
        for removed in itertools.combinations(range(n), k):
            bits = format_bits(removed, n)
            assert parse_bits(bits, n) == frozenset(removed)
            if k == n:
                assert bits == ""  # all removed: empty bits, as in the published set
            else:
                assert len(bits) == n


def test_bits_put_annotation_zero_leftmost_and_read_short_integers():
    assert format_bits({0}, 4) == "1000"
    assert format_bits({3}, 4) == "0001"
    assert parse_bits("1", 3) == {2}  # an unpadded integer is read as binary
    with pytest.raises(ValueError):
        parse_bits("10101", 3)
    with pytest.raises(ValueError):
        parse_bits("1021", 4)
    with pytest.raises(ValueError):
        format_bits({4}, 4)


def test_changed_ids_is_the_xor():
    assert changed_ids({0, 1}, {1, 2}) == {0, 2}  # 1 removed in both: not a change
    assert changed_ids(set(), {3}) == {3}
    assert changed_ids({1}, {1}) == frozenset()


# ---------------------------------------------------------------- safe unpickling


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_safe_pickle_refuses_code_and_accepts_plain(tmp_path):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"boxes": [_Evil()]}))
    with pytest.raises(SpotdiffError, match="evil.pkl.*refusing to unpickle"):
        load_pickle_plain(evil)

    arr = np.empty(1, dtype=object)
    arr[0] = _Evil()
    evil_npy = tmp_path / "evil.npy"
    np.save(evil_npy, arr, allow_pickle=True)
    with pytest.raises(SpotdiffError, match="evil.npy"):
        load_npy_plain(evil_npy)

    # A class that is harmless but not plain data is refused too.
    odd = tmp_path / "odd.pkl"
    odd.write_bytes(pickle.dumps(Path("/x")))
    with pytest.raises(SpotdiffError, match="odd.pkl"):
        load_pickle_plain(odd)

    truncated = tmp_path / "cut.pkl"
    truncated.write_bytes(pickle.dumps({"a": list(range(100))})[:20])
    with pytest.raises(SpotdiffError, match="cut.pkl"):
        load_pickle_plain(truncated)

    plain = {"1": [[1.0, 2.0, 3.0, 4.0]], "2": np.arange(4, dtype=np.float32)}
    for protocol in (2, 3, 4, 5):
        good = tmp_path / f"good{protocol}.pkl"
        good.write_bytes(pickle.dumps(plain, protocol=protocol))
        loaded = load_pickle_plain(good)
        assert loaded["1"] == plain["1"] and np.array_equal(loaded["2"], plain["2"])

    anns = np.empty(2, dtype=object)
    anns[0] = {"segmentation": [[1.0, 2.0, 5.0, 2.0, 5.0, 6.0]], "bbox": [1, 2, 4, 4], "id": np.int64(7)}
    anns[1] = {"segmentation": {"counts": b"0a1", "size": [4, 4]}, "bbox": np.array([0.0, 0, 1, 1])}
    good_npy = tmp_path / "meta.npy"
    np.save(good_npy, anns, allow_pickle=True)
    back = load_npy_plain(good_npy)
    assert back.shape == (2,) and back[0]["id"] == 7 and back[1]["segmentation"]["counts"] == b"0a1"


# ---------------------------------------------------------------- the layout


def test_writer_and_reader_round_trip(tmp_path):
    writer = CocoInpaintedWriter(tmp_path)
    original = np.random.default_rng(0).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    anns = [{"id": 1, "bbox": [2, 3, 10, 5], "segmentation": [[2, 3, 12, 3, 12, 8, 2, 8]]},
            {"id": 2, "bbox": [20, 20, 4, 4], "segmentation": []}]
    writer.write_original(5, original)
    writer.write_inpainted(5, {1}, 2, np.zeros((32, 48, 3), np.uint8))  # padded to a multiple of 8
    writer.write_inpainted(5, {0, 1}, 2, original)
    writer.write_metadata(5, anns)
    writer.write_test_augmentation(5, "original", {"aff": {"angle": torch.tensor([3.0])}, "jit": {}})
    with pytest.raises(SpotdiffError, match="list_of_indices.npy"):
        CocoInpainted(tmp_path)  # not finished yet
    writer.write_index([5])

    ds = CocoInpainted(tmp_path)
    assert ds.indices == [5]
    assert np.array_equal(ds.load_original(5), original)
    versions = ds.versions(5)
    assert [v.removed for v in versions] == [frozenset({0, 1}), frozenset({1})]
    assert ds.load_inpainted(versions[1]).shape == original.shape  # resized to the original
    masks = ds.annotation_masks(5)
    assert masks.shape == (2, 30, 41)
    ys, xs = np.nonzero(masks[0])
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (2, 3, 12, 8)
    assert masks[1].sum() == 16  # bbox-only annotation fills its box
    assert ds.test_augmentation(5, "original")["aff"]["angle"].item() == 3.0
    assert ds.test_augmentation(5, "inpainted") is None
    with pytest.raises(SpotdiffError, match="no inpainted version"):
        ds.load_removed(5, {0})


# ---------------------------------------------------------------- backends


def test_opencv_changes_only_inside_the_dilated_mask(tmp_path):
    source = make_coco_source(tmp_path / "source", num_images=2)
    img = read_source(source)[1]
    image = load_image(img.path)
    from spotdiff.data.coco_inpainted import annotation_masks

    hole = dilate(annotation_masks(img.annotations, img.height, img.width)[0], 3)
    for method in ("telea", "ns"):
        out = OpenCVInpainter(method, 3, workers=1).inpaint([image], [hole])[0]
        changed = (out != image).any(axis=2)
        assert changed.any()
        assert not (changed & ~hole).any()


class _TinyLama(torch.nn.Module):
    """Same signature as big-lama.pt: fills the mask with the image's mean colour; insists on ×8 sizes."""

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        assert image.shape[2] % 8 == 0 and image.shape[3] % 8 == 0
        assert mask.shape[1] == 1
        mean = image.mean(dim=(2, 3), keepdim=True)
        return image * (1 - mask) + mean * mask + 0.01  # +0.01: the backend must composite


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_lama_backend_with_a_tiny_torchscript_model(tmp_path):
    path = tmp_path / "tiny-lama.pt"
    torch.jit.save(torch.jit.script(_TinyLama()), str(path))
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 200, (37, 45, 3), dtype=np.uint8),
              rng.integers(0, 200, (30, 50, 3), dtype=np.uint8)]
    masks = [np.zeros((37, 45), bool), np.zeros((30, 50), bool)]
    masks[0][5:15, 5:20] = True
    masks[1][20:30, 40:50] = True
    outs = LamaInpainter(path, device="cpu", batch_size=2).inpaint(images, masks)
    for image, mask, out in zip(images, masks, outs):
        assert out.shape == image.shape and out.dtype == np.uint8
        assert np.array_equal(out[~mask], image[~mask])
        assert not np.array_equal(out[mask], image[mask])

    with pytest.raises(SpotdiffError, match="not found"):
        LamaInpainter(tmp_path / "missing.pt", device="cpu")
    bogus = tmp_path / "bogus.pt"
    torch.save({"state_dict": {}}, bogus)
    with pytest.raises(SpotdiffError, match="not a TorchScript model"):
        LamaInpainter(bogus, device="cpu")

    # Whole stage through the lama backend.
    source = make_coco_source(tmp_path / "source", num_images=2)
    params = InpaintParams(backend="lama", lama_checkpoint=str(path), device="cpu", batch_size=3)
    summary = run_inpaint(params, source, tmp_path / "out")
    assert summary.versions == len(list((tmp_path / "out" / "inpainted").glob("*.png"))) > 0


# ---------------------------------------------------------------- the stage


def test_plan_removals_gives_distinct_nonempty_subsets():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 6):
        for _ in range(20):
            plan = plan_removals(n, 3, rng)
            assert 1 <= len(plan) <= min(3, 2**n - 1)
            assert len(set(plan)) == len(plan)
            assert all(p and max(p) < n for p in plan)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_inpaint_stage_writes_the_layout_and_resumes_after_a_kill(tmp_path):
    source = make_coco_source(tmp_path / "source", num_images=6)
    params = InpaintParams(max_versions=3, dilate_px=2, batch_size=2)
    run_inpaint(params, source, tmp_path / "clean")
    ds = CocoInpainted(tmp_path / "clean")
    assert ds.indices == [10, 11, 12, 13, 14, 15]
    for idx in ds.indices:
        anns = ds.annotations(idx)
        versions = ds.versions(idx)
        assert 1 <= len(versions) <= 3
        assert len({v.removed for v in versions}) == len(versions) and all(v.removed for v in versions)
        original = ds.load_original(idx)
        masks = ds.annotation_masks(idx)
        for v in versions:  # pixels change only around the removed objects
            hole = dilate(masks[sorted(v.removed)].any(axis=0), 2)
            assert not ((ds.load_inpainted(v) != original).any(axis=2) & ~hole).any()
        assert len(anns) == 1 + (idx - 10) % 3

    # A run killed after 2 images: no index, so no reader (and no DVC lock) trusts it.
    out = tmp_path / "out"
    partial = run_inpaint(params, source, out, stop_after=2)
    assert partial.images_done_now == 2
    assert not (out / "list_of_indices.npy").exists()
    with pytest.raises(SpotdiffError, match="not a complete"):
        CocoInpainted(out)
    # A stray temporary file from a SIGKILL mid-write is cleaned up.
    (out / "inpainted" / ".12_mask1.png.abc.tmp.png").write_bytes(b"half")

    resumed = run_inpaint(params, source, out)
    assert resumed.skipped_images == 2 and resumed.images_done_now == 4
    assert _snapshot(out) == _snapshot(tmp_path / "clean")

    # Delete one inpainted version: only that one is redone.
    victim = sorted((out / "inpainted").glob("13_mask*.png"))[0]
    victim.unlink()
    again = run_inpaint(params, source, out)
    assert again.images_done_now == 1 and again.versions_done_now == 1
    assert _snapshot(out) == _snapshot(tmp_path / "clean")

    # Nothing missing: nothing redone.
    assert run_inpaint(params, source, out).versions_done_now == 0

    # Different params: the previous files are not reused.
    other = run_inpaint(params.model_copy(update={"seed": 5}), source, out)
    assert other.skipped_images == 0 and other.images_done_now == 6


def test_inpaint_cli(tmp_path):
    source = make_coco_source(tmp_path / "source", num_images=2)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"inpaint": {"max_versions": 2, "opencv_method": "ns"}}))
    out = tmp_path / "inpainted"
    assert main(["inpaint", "--params", str(params_file), "--source", str(source), "--out", str(out)]) == 0
    assert len(CocoInpainted(out)) == 2
    assert main(["inpaint", "--params", str(params_file), "--source", str(tmp_path / "nope"),
                 "--out", str(out)]) == 2
