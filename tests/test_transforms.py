"""Exact pair augmentation: boxes follow the objects, only what both images show counts, replayable."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from spotdiff.data.transforms import PairAugmenter, identity_params, image_to_tensor
from spotdiff.params import AugmentParams

H = W = 96  # square, and S = 96: boxes at S are in the source pixels


def _square_pair(x1=30, y1=40, side=20):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    b = a.copy()
    b[y1:y1 + side, x1:x1 + side] = 255  # the change
    masks = np.zeros((1, H, W), bool)
    masks[0, y1:y1 + side, x1:x1 + side] = True
    return a, b, masks


def _params(angle=0.0, tx=0.0, ty=0.0, scale=1.0):
    p = identity_params(H, W)
    p["aff"]["angle"] = torch.tensor([angle])
    p["aff"]["translations"] = torch.tensor([[tx, ty]])
    p["aff"]["scale"] = torch.tensor([[scale, scale]])
    return p


def _analytic_box(m: np.ndarray, x1, y1, x2, y2):
    """Box of the pixel cells [x1,x2)×[y1,y2) under the pixel-centre matrix m (exclusive x2/y2)."""
    centres = np.array([[x, y, 1.0] for x in (x1, x2 - 1) for y in (y1, y2 - 1)])
    q = (m @ centres.T).T
    return np.array([q[:, 0].min(), q[:, 1].min(), q[:, 0].max() + 1, q[:, 1].max() + 1])


def test_identity_keeps_images_and_gives_the_mask_box():
    aug = PairAugmenter(AugmentParams(), H)
    a, b, masks = _square_pair()
    out = aug(a, b, masks, params=(identity_params(H, W), identity_params(H, W)))
    # Jitter with neutral factors goes through an HSV round trip: equal up to float rounding.
    assert torch.allclose(out.image_a, image_to_tensor(a)[0], atol=1e-4)
    assert out.boxes_a.tolist() == [[30.0, 40.0, 50.0, 60.0]] == out.boxes_b.tolist()


@pytest.mark.parametrize("angle,tx,ty,scale",
                         [(90.0, 5.0, -3.0, 1.2), (30.0, 0.0, 0.0, 0.8), (-17.0, 8.0, 6.0, 1.0)])
def test_box_of_a_square_after_a_known_affine_matches_the_analytic_answer(angle, tx, ty, scale):
    aug = PairAugmenter(AugmentParams(), H)
    a, b, masks = _square_pair()
    p = _params(angle, tx, ty, scale)
    m = aug.matrix(p, image_to_tensor(a))[0].double().numpy()
    out = aug(a, b, masks, params=(p, identity_params(H, W)))
    expected = _analytic_box(m, 30, 40, 50, 60)
    assert np.abs(out.boxes_a.numpy()[0] - expected).max() <= 1.0, (out.boxes_a, expected)
    assert out.boxes_b.tolist() == [[30.0, 40.0, 50.0, 60.0]]
    # The image really moved with the box: the white square is where the box says in b.
    ys, xs = np.nonzero((out.image_b.numpy() > 0.999).all(axis=0))
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (30, 40, 50, 60)


def test_only_the_part_visible_in_both_images_is_boxed():
    aug = PairAugmenter(AugmentParams(), H)
    a, b, masks = _square_pair(x1=70, y1=40, side=20)  # columns 70..89
    # b moved 15 px right: columns >= 81 of the source leave b's frame (81 + 15 = 96).
    out = aug(a, b, masks, params=(identity_params(H, W), _params(tx=15.0)))
    assert np.allclose(out.boxes_a.numpy(), [[70, 40, 81, 60]], atol=1.0)
    assert np.allclose(out.boxes_b.numpy(), [[85, 40, 96, 60]], atol=1.0)


def test_a_pair_left_with_no_visible_change_is_resampled_not_dropped():
    a, b, masks = _square_pair(x1=0, y1=0, side=6)
    # Replayed params that push the change out of b's frame fall back to the identity.
    aug = PairAugmenter(AugmentParams(), H)
    out = aug(a, b, masks, params=(identity_params(H, W), _params(tx=-60.0, ty=-60.0)))
    assert out.attempts == 2 and out.boxes_a.tolist() == [[0.0, 0.0, 6.0, 6.0]]
    # Sampling with huge translations: always some box (a lucky draw or the identity fallback).
    wild = PairAugmenter(AugmentParams().model_copy(update={"translate": 0.9, "max_resample": 2}), H)
    for seed in range(6):
        out = wild(a, b, masks, rng=np.random.default_rng(seed))
        assert len(out.boxes_a) == len(out.boxes_b) == 1
        for boxes in (out.boxes_a, out.boxes_b):
            assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert 1 <= out.attempts <= 3


def test_sampled_params_are_deterministic_storable_and_replay_exactly():
    aug = PairAugmenter(AugmentParams(), 64)
    a, b, masks = _square_pair()
    first = aug(a, b, masks, rng=np.random.default_rng(7))
    second = aug(a, b, masks, rng=np.random.default_rng(7))
    assert torch.equal(first.image_a, second.image_a) and torch.equal(first.boxes_b, second.boxes_b)
    assert first.image_a.shape == (3, 64, 64)
    # Store as the published test-augmentation files are stored, load with weights_only, replay.
    stored = []
    for params in (first.params_a, first.params_b):
        buf = io.BytesIO()
        torch.save(params, buf)
        buf.seek(0)
        stored.append(torch.load(buf, weights_only=True))
    replayed = aug(a, b, masks, params=tuple(stored))
    assert torch.equal(replayed.image_a, first.image_a) and torch.equal(replayed.image_b, first.image_b)
    assert torch.equal(replayed.boxes_a, first.boxes_a) and torch.equal(replayed.boxes_b, first.boxes_b)
    other = aug(a, b, masks, rng=np.random.default_rng(8))
    assert not torch.equal(other.image_a, first.image_a)


def test_disabled_augmentation_is_the_identity_plus_resize():
    aug = PairAugmenter(AugmentParams().model_copy(update={"enabled": False}), 48)
    a, b, masks = _square_pair()
    out = aug(a, b, masks, rng=np.random.default_rng(0))
    assert out.boxes_a.tolist() == [[15.0, 20.0, 25.0, 30.0]]  # 96 -> 48: halved
