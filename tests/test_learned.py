"""The learned method's inference wrapper: sizes, batching, references, ignore mask, display, attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.models import save_tiny_cyws
from spotdiff.boxes import suppress
from spotdiff.errors import SpotdiffError
from spotdiff.methods.learned import CywsDetector
from spotdiff.models.checkpoint import save_model
from spotdiff.models.cyws import CYWS


@pytest.fixture(scope="module")
def detector() -> CywsDetector:
    torch.manual_seed(0)
    return CywsDetector(CYWS(backbone="resnet18", image_size=64, max_boxes=20), device="cpu")


def test_boxes_come_back_in_each_images_own_pixels(detector):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)
    b = rng.integers(0, 255, (300, 120, 3), dtype=np.uint8)
    boxes_a, scores_a, boxes_b, scores_b = detector.detect(a, b)
    assert 1 <= len(boxes_a) <= 20 and len(scores_a) == len(boxes_a)
    assert boxes_a[:, [0, 2]].max() <= 160 + 1e-6 and boxes_a[:, [1, 3]].max() <= 90 + 1e-6
    assert boxes_b[:, [0, 2]].max() <= 120 + 1e-6 and boxes_b[:, [1, 3]].max() <= 300 + 1e-6
    assert np.all(np.diff(scores_a) <= 1e-9)
    # the batched path gives the same answer as one pair at a time
    batched = detector.detect_batch([(a, b), (a, b)])
    assert np.allclose(batched[1][0], boxes_a, atol=1e-4) and np.allclose(batched[0][2], boxes_b, atol=1e-4)


def test_ignore_mask_drops_boxes_mostly_inside_it_in_both_images(detector):
    """One rule (`PairDetections.drop_ignored`): a box more than half inside the mask goes — in A, and
    in B with the mask scaled to B's size; boxes outside it stay."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    b = rng.integers(0, 255, (128, 96, 3), dtype=np.uint8)
    everything = np.ones((64, 64), bool)
    boxes_a, _, boxes_b, _ = detector.detect(a, b, ignore_mask=everything)
    assert len(boxes_a) == 0 and len(boxes_b) == 0
    full = detector.run(a, b)
    left = np.zeros((64, 64), bool)
    left[:, :32] = True
    kept = detector.run(a, b, ignore_mask=left)
    assert len(kept.boxes_a) < len(full.boxes_a) and len(kept.boxes_b) < len(full.boxes_b)
    centres_a = (kept.boxes_a[:, 0] + kept.boxes_a[:, 2]) / 2
    assert (centres_a >= 32 - 1e-6).all() or len(kept.boxes_a) == 0
    # a degenerate (zero-area) box is judged by the pixel it sits on
    from spotdiff.methods import PairDetections

    dots = PairDetections(np.array([[10.0, 10, 10, 10], [50, 10, 50, 10]]), np.array([0.9, 0.8]),
                          np.zeros((0, 4)), np.zeros(0), (64, 64), (64, 64)).drop_ignored(left)
    assert dots.boxes_a.tolist() == [[50.0, 10.0, 50.0, 10.0]]


def test_display_is_top_k_after_nms_and_the_interface_is_complete(detector):
    from spotdiff.methods import Detector, PairDetections

    assert isinstance(detector, Detector) and detector.title == "CYWS" and detector.uses_model
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    dets = PairDetections(boxes, scores, boxes, scores, (64, 64), (64, 64))
    shown = detector.display(dets, 2)
    assert shown.boxes_a.tolist() == [[0, 0, 10, 10], [20, 20, 30, 30]] and len(dets.boxes_a) == 4
    assert len(detector.display(dets)) == 3  # default top 5, after NMS
    assert detector.settings() == {"engine": "auto"} and detector.reference is None
    assert detector.summary() == "resnet18, 3×coam, scSE on, 64 px"


def test_attention_from_a_point_is_a_distribution_over_b(detector):
    rng = np.random.default_rng(2)
    a = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    att = detector.attention_from(a, a[::-1].copy(), (10.0, 50.0))
    assert att.ndim == 2 and att.shape == (2, 2)  # the deepest map: 64 / 32
    assert att.sum() == pytest.approx(1.0, abs=1e-5) and (att >= 0).all()
    noam = CywsDetector(CYWS(backbone="resnet18", attention="noam", image_size=64), device="cpu")
    assert noam.attention_from(a, a, (1.0, 1.0)) is None


def test_suppress_keeps_top_k_without_overlaps():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    kept, kept_scores = suppress(boxes, scores, top_k=2)
    assert kept.tolist() == [[0, 0, 10, 10], [20, 20, 30, 30]] and kept_scores.tolist() == [0.9, 0.7]
    empty, _ = suppress(np.zeros((0, 4)), np.zeros(0))
    assert empty.shape == (0, 4)


def test_references(tmp_path):
    save_tiny_cyws(tmp_path / "m.pt", seed=None)
    loaded = CywsDetector.from_reference(tmp_path / "m.pt", device="cpu")
    assert loaded.size == 64 and loaded.reference == str(tmp_path / "m.pt")
    with pytest.raises(SpotdiffError, match="not found"):
        CywsDetector.from_reference(tmp_path / "missing.pt")
    with pytest.raises(SpotdiffError, match="unknown reference"):
        CywsDetector.from_reference("http://example.invalid/model.pt")


def test_checkpoints_are_byte_deterministic(tmp_path):
    """The same weights give the same file bytes (DVC hashes outputs; temp names must not leak in)."""
    model = CYWS(backbone="resnet18", image_size=64)
    save_model(model, tmp_path / "one.pt")
    save_model(model, tmp_path / "two.pt")
    assert (tmp_path / "one.pt").read_bytes() == (tmp_path / "two.pt").read_bytes()
