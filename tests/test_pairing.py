"""The learned model's boxes carry the same number for the same change in both images, also when the
camera moved between the two shots (its boxes are matched after registration, not by position)."""

from __future__ import annotations

import numpy as np
import skimage.data

from spotdiff.methods.base import PairDetections, map_boxes, pair_labels
from spotdiff.methods.learned import a_to_b_homography


def test_map_boxes_follows_a_homography():
    shift = np.array([[1.0, 0, 40], [0, 1, -10], [0, 0, 1]])
    assert map_boxes(np.array([[10, 20, 30, 60]]), shift).tolist() == [[50, 10, 70, 50]]
    scale = np.diag([2.0, 0.5, 1.0])
    assert map_boxes(np.array([[10, 20, 30, 60]]), scale).tolist() == [[20, 10, 60, 30]]


def test_labels_match_through_the_camera_motion_and_one_to_one():
    boxes_a = np.array([[100, 100, 140, 140], [150, 100, 190, 140], [300, 300, 320, 320]], float)
    shift = np.array([[1.0, 0, 45], [0, 1, 0], [0, 0, 1]])  # B's camera saw everything 45 px to the right
    boxes_b = map_boxes(boxes_a[[1, 0]], shift)  # the first two changes, listed in another order
    # by position alone, A's box 1 lands on B's box of A's box 2 (it moved 45 px onto it)
    plain_a, plain_b = pair_labels(boxes_a, boxes_b, (400, 400), (400, 400))
    assert plain_b[1] != plain_a[0]
    la, lb = pair_labels(boxes_a, boxes_b, (400, 400), (400, 400), a_to_b=shift)
    assert la == [1, 2, 3] and lb == [2, 1]
    dets = PairDetections(boxes_a, np.array([0.9, 0.8, 0.7]), boxes_b, np.array([0.5, 0.9]), (400, 400), (400, 400),
                          a_to_b=shift)
    assert dets.labels_b == [2, 1] and "a_to_b" in dets.to_json()
    dets.filter(top_k=1)  # relabelling after a filter keeps the homography: B's best is A's best, moved
    assert dets.labels_a == [1] and dets.labels_b == [1]


def test_registration_estimate_for_pairing_recovers_a_camera_shift():
    a = skimage.data.astronaut()  # 512×512 RGB photograph
    dx, dy = 24, -12
    b = np.roll(np.roll(a, dx, axis=1), dy, axis=0)
    H, method = a_to_b_homography(a, b)
    assert method != "identity"
    centre = map_boxes(np.array([[200, 200, 260, 260]]), H)[0]
    np.testing.assert_allclose(centre, [200 + dx, 200 + dy, 260 + dx, 260 + dy], atol=2.0)
