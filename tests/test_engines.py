"""Inference engines: the fast paths give eager's boxes; the ONNX export is cached and reused."""

from __future__ import annotations

import pytest
import torch

from spotdiff.errors import SpotdiffError
from spotdiff.methods.engines import (
    detections_agree,
    make_engine,
    onnx_path,
    resolve_engine,
    run_decoded,
    spread_head_outputs,
)
from spotdiff.models.cyws import CYWS

SIZE = 64


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    image_a = torch.rand(2, 3, SIZE, SIZE, generator=gen)
    image_b = image_a.clone()
    image_b[:, :, 16:40, 20:44] = torch.rand(2, 3, 24, 24, generator=gen)  # a pasted square
    return image_a, image_b


@pytest.fixture(scope="module")
def model(images) -> CYWS:
    """A small R18 whose head gives clear peaks and real box sizes (random init gives ties only)."""
    torch.manual_seed(0)
    return spread_head_outputs(CYWS(backbone="resnet18", image_size=SIZE).eval(), *images)


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def eager_dets(model, images):
    return run_decoded(make_engine(model, "eager"), *images, max_boxes=model.max_boxes)


@pytest.mark.parametrize("kind", ["onnxruntime", "channels_last"])
def test_fast_engine_gives_eagers_boxes(kind, model, images, eager_dets, onnx_cache):
    engine = make_engine(model, kind, folder=onnx_cache)
    got = run_decoded(engine, *images, max_boxes=model.max_boxes)
    for side_ref, side_got in zip(eager_dets, got):
        check = detections_agree(side_ref, side_got)
        assert check["peaks_compared"] >= 150  # a real comparison, not a pile of ties
        assert check["equal"], check
        assert check["max_box_delta_px"] <= 0.5
        # same top-k peaks: every box of eager's list above the cut is in the engine's, and the
        # engine's top box is eager's top box
        assert check["peaks_matched"] == check["peaks_compared"]
    for (ref_boxes, ref_scores), (boxes, scores) in zip(eager_dets[0], got[0]):
        torch.testing.assert_close(boxes[0], ref_boxes[0], atol=0.5, rtol=0)
        assert abs(float(scores[0] - ref_scores[0])) < 1e-4


def test_onnx_outputs_have_the_eager_contract(model, images, onnx_cache):
    out_a, out_b = make_engine(model, "onnxruntime", folder=onnx_cache)(*images)
    ref_a, ref_b = make_engine(model, "eager")(*images)
    for got, ref in ((out_a, ref_a), (out_b, ref_b)):
        assert set(got) == set(ref) == {"heatmap", "size", "offset"}
        for key in ref:
            assert got[key].shape == ref[key].shape and got[key].dtype == torch.float32
            torch.testing.assert_close(got[key], ref[key], atol=1e-3, rtol=1e-3)


def test_onnx_export_is_cached_and_reused(model, images, onnx_cache):
    first = make_engine(model, "onnxruntime", folder=onnx_cache)
    stamp = first.path.stat().st_mtime_ns, first.path.stat().st_size
    second = make_engine(model, "onnxruntime", folder=onnx_cache)
    assert second.path == first.path and not second.exported
    assert second.path.stat().st_size == stamp[1]
    assert [p.name for p in onnx_cache.glob("*.onnx")] == [first.path.name]  # no temp files left
    # other weights → another cache entry (never a stale graph)
    other = CYWS(backbone="resnet18", image_size=SIZE).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.head.heatmap[-1].bias.add_(1.0)
    assert onnx_path(other, onnx_cache) != first.path
    # batch size is dynamic: one graph serves batch 1 and 3
    out_a, _ = second(images[0][:1], images[1][:1])
    assert out_a["heatmap"].shape == (1, 1, SIZE, SIZE)
    out_a, _ = second(torch.cat([images[0], images[0][:1]]), torch.cat([images[1], images[1][:1]]))
    assert out_a["heatmap"].shape == (3, 1, SIZE, SIZE)


def test_onnx_engine_refuses_other_sizes(model, onnx_cache):
    engine = make_engine(model, "onnxruntime", folder=onnx_cache)
    with pytest.raises(SpotdiffError, match="3×64×64"):
        engine(torch.rand(1, 3, 96, 96), torch.rand(1, 3, 96, 96))


def test_engine_names_resolve():
    assert resolve_engine("auto", "cpu") == "onnxruntime"
    assert resolve_engine("auto", "cuda") == "eager"
    assert resolve_engine("eager", "cpu") == "eager"
    with pytest.raises(SpotdiffError, match="unknown engine"):
        resolve_engine("tensorrt", "cpu")
    with pytest.raises(SpotdiffError, match="CPU only"):
        resolve_engine("onnxruntime", "cuda")


def test_agreement_check_catches_a_moved_box(eager_dets):
    ref = eager_dets[0]
    moved = [(boxes.clone(), scores.clone()) for boxes, scores in ref]
    moved[0][0][0, 0] += 0.75  # the top box of image 0, 0.75 px off
    check = detections_agree(ref, moved)
    assert not check["equal"] and check["peaks_matched"] == check["peaks_compared"] - 1
    rescored = [(boxes.clone(), scores.clone()) for boxes, scores in ref]
    rescored[1][1][0] -= 0.01
    assert not detections_agree(ref, rescored)["equal"]
    assert detections_agree(ref, ref)["equal"]


def test_bf16_engine_keeps_the_output_contract(model, images):
    """bf16 autocast (for GPUs; never picked by `auto`) still hands decode float32 maps of eager's shapes."""
    out_a, out_b = make_engine(model, "bf16")(*images)
    ref_a, _ = make_engine(model, "eager")(*images)
    for key in ref_a:
        assert out_a[key].dtype == out_b[key].dtype == torch.float32
        assert out_a[key].shape == ref_a[key].shape
        assert torch.isfinite(out_a[key]).all()


def test_evaluate_engine_param_accepts_exactly_the_engines():
    from spotdiff.methods.engines import ENGINES
    from spotdiff.params import EvaluateParams

    for name in ENGINES:
        EvaluateParams(engine=name).validate("evaluate")
    with pytest.raises(SpotdiffError, match="evaluate.engine"):
        EvaluateParams(engine="tensorrt").validate("evaluate")


def test_detector_on_the_default_engine_gives_eagers_boxes(model, monkeypatch, tmp_path):
    """CywsDetector's default (auto → ONNX Runtime on the CPU) returns eager's boxes, in image pixels."""
    import numpy as np

    from spotdiff.methods.learned import CywsDetector

    monkeypatch.setenv("SPOTDIFF_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)
    b = a.copy()
    b[20:60, 40:100] = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    fast = CywsDetector(model, device="cpu")
    eager = CywsDetector(model, device="cpu", engine="eager")
    got, ref = fast.detect(a, b), eager.detect(a, b)
    assert fast.engine.kind == "onnxruntime" and eager.engine.kind == "eager"
    for side in (0, 2):
        pairs = [(torch.from_numpy(ref[side]), torch.from_numpy(ref[side + 1]))]
        check = detections_agree(pairs, [(torch.from_numpy(got[side]), torch.from_numpy(got[side + 1]))],
                                 px_tol=0.5 * 160 / SIZE)  # boxes scaled from 64² to the 160×90 image
        assert check["equal"] and check["peaks_compared"] >= 50, check
    with pytest.raises(SpotdiffError, match="unknown engine"):
        CywsDetector(model, device="cpu", engine="fastest")


def test_onnx_engine_of_a_half_resolution_head_gives_eagers_boxes(images, tmp_path):
    """`model.output_stride: 2` exports and runs in ONNX Runtime; decoded with the stride, its boxes
    are eager's, in input pixels."""
    torch.manual_seed(0)
    half = spread_head_outputs(CYWS(backbone="resnet18", image_size=SIZE, output_stride=2).eval(), *images)
    ref = run_decoded(make_engine(half, "eager"), *images, max_boxes=half.max_boxes, stride=2)
    got = run_decoded(make_engine(half, "onnxruntime", folder=tmp_path), *images, max_boxes=half.max_boxes, stride=2)
    for side_ref, side_got in zip(ref, got):
        check = detections_agree(side_ref, side_got)
        assert check["equal"] and check["peaks_compared"] >= 50, check
    assert max(float(b[:, 2:].max()) for b, _ in ref[0]) > SIZE / 2  # input pixels, not map cells
