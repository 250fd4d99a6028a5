"""VOC AP@0.5 (the paper's protocol): hand-computed cases, agreement with the per-image loop reference
and with pycocotools, per-size breakdown."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spotdiff.evaluation import (
    SIZE_RANGES,
    average_precision,
    average_precision_loop,
    coco_ap,
    evaluate_detections,
    size_breakdown,
    voc_ap_from_curve,
)

E = np.zeros((0, 4))
S0 = np.zeros(0)


def ap(gts, dets, scores, **kw):
    vec = average_precision(gts, dets, scores, **kw)
    ref = average_precision_loop(gts, dets, scores, **kw)
    if math.isnan(ref.ap):
        assert math.isnan(vec.ap)
    else:
        assert vec.ap == pytest.approx(ref.ap, abs=1e-12)
    return vec


def b(*rows):
    return np.array(rows, dtype=float).reshape(-1, 4)


def test_perfect_detections_give_one():
    gts = [b([0, 0, 10, 10], [20, 20, 40, 50]), b([5, 5, 15, 25])]
    r = ap(gts, gts, [np.array([0.9, 0.8]), np.array([0.7])])
    assert r.ap == pytest.approx(1.0)
    assert r.num_tp == 3 and r.num_gt == 3


def test_no_detections_give_zero():
    r = ap([b([0, 0, 10, 10])], [E], [S0])
    assert r.ap == 0.0 and r.num_det == 0 and r.precision.size == 0


def test_false_positive_ranked_ahead_of_true_positive_halves_ap():
    # precision [0, 1/2], recall [0, 1] -> envelope 1/2 over recall (0, 1] -> AP 0.5
    r = ap([b([0, 0, 10, 10])], [b([50, 50, 60, 60], [0, 0, 10, 10])], [np.array([0.9, 0.8])])
    assert r.ap == pytest.approx(0.5)
    np.testing.assert_allclose(r.precision, [0.0, 0.5])
    np.testing.assert_allclose(r.recall, [0.0, 1.0])


def test_interpolated_envelope_all_points():
    # TP, FP, TP over 2 GT: precision [1, 1/2, 2/3], recall [1/2, 1/2, 1]
    # envelope over (0, 1/2] is 1, over (1/2, 1] is 2/3 -> AP = 1/2 + 1/3
    gts = [b([0, 0, 10, 10], [30, 30, 40, 40])]
    dets = [b([0, 0, 10, 10], [60, 60, 70, 70], [30, 30, 40, 40])]
    r = ap(gts, dets, [np.array([0.9, 0.8, 0.7])])
    assert r.ap == pytest.approx(0.5 + 1 / 3)


def test_duplicates_are_false_positives():
    # image 0: TP 0.9, duplicate 0.8; image 1: TP 0.7 -> same curve as TP, FP, TP
    gts = [b([0, 0, 10, 10]), b([0, 0, 10, 10])]
    dets = [b([0, 0, 10, 10], [0, 0, 10, 10]), b([0, 0, 10, 10])]
    r = ap(gts, dets, [np.array([0.9, 0.8]), np.array([0.7])])
    assert r.num_tp == 2 and r.num_det == 3
    assert r.ap == pytest.approx(0.5 + 1 / 3)


def test_detections_in_images_without_gt_are_false_positives():
    gts = [b([0, 0, 10, 10]), E]
    dets = [b([0, 0, 10, 10]), b([0, 0, 10, 10])]
    r = ap(gts, dets, [np.array([0.5]), np.array([0.9])])
    assert r.ap == pytest.approx(0.5)


def test_no_gt_at_all_is_nan():
    r = ap([E, E], [b([0, 0, 5, 5]), E], [np.array([0.3]), S0])
    assert math.isnan(r.ap) and r.num_gt == 0 and r.num_det == 1
    assert r.summary()["ap50"] is None
    assert math.isnan(coco_ap([E], [E], [S0])["ap50"])


def test_argmax_rule_no_fallback_to_second_best_gt():
    # det B overlaps GT1 (IoU .905) and GT2 (IoU .739); GT1 is taken by det A -> B is a FP (VOC
    # devkit / the paper's code). COCO falls back to GT2 and counts it.
    gts = [b([0, 0, 10, 10], [2, 0, 12, 10])]
    dets = [b([0, 0, 10, 10], [0.5, 0, 10.5, 10])]
    scores = [np.array([0.9, 0.8])]
    r = ap(gts, dets, scores)
    assert r.ap == pytest.approx(0.5)
    assert coco_ap(gts, dets, scores)["ap50"] == pytest.approx(1.0)


def test_iou_exactly_at_threshold_matches():
    r = ap([b([0, 0, 10, 10])], [b([0, 0, 20, 10])], [np.array([1.0])])  # IoU = 100/200
    assert r.ap == pytest.approx(1.0)
    r = ap([b([0, 0, 10, 10])], [b([0, 0, 20.01, 10])], [np.array([1.0])])
    assert r.ap == 0.0


def test_only_top_max_boxes_per_image_count():
    gts = [b([0, 0, 10, 10])]
    fps = np.array([[100 + i, 100, 110 + i, 110] for i in range(100)], dtype=float)
    dets = [np.concatenate([fps, b([0, 0, 10, 10])])]
    scores = [np.concatenate([np.linspace(1.0, 0.5, 100), [0.1]])]
    assert ap(gts, dets, scores, max_boxes=100).ap == 0.0
    assert ap(gts, dets, scores, max_boxes=101).ap == pytest.approx(1 / 101)


def test_size_breakdown_ignores_other_sizes():
    small, large = [0, 0, 10, 10], [100, 100, 300, 300]
    gts = [b(small, large)]
    # a perfect hit on each, plus an unmatched large false positive ranked first
    dets = [b([400, 400, 600, 600], small, large)]
    scores = [np.array([0.95, 0.9, 0.8])]
    sizes = size_breakdown(gts, dets, scores)
    ref = {k: average_precision_loop(gts, dets, scores, area_range=v) for k, v in SIZE_RANGES.items()}
    assert sizes["small"].ap == pytest.approx(1.0) == ref["small"].ap  # large det/GT ignored
    assert sizes["small"].num_det == 1
    assert sizes["large"].ap == pytest.approx(0.5) == ref["large"].ap  # FP counted, then TP
    assert math.isnan(sizes["medium"].ap) and sizes["medium"].num_gt == 0


def test_voc_ap_from_curve_matches_definition():
    # one TP at recall 1/3 with precision 1, then precision 0.5 at recall 2/3
    assert voc_ap_from_curve(np.array([1.0, 0.5]), np.array([1 / 3, 2 / 3])) == pytest.approx(
        1 / 3 + 0.5 / 3)


def random_case(rng, n_img, max_gt=8, max_det=40, size=300.0, disjoint=False, tie_scores=False):
    gts, dets, scores = [], [], []
    for _ in range(n_img):
        g = int(rng.integers(0, max_gt + 1))
        if disjoint:  # one GT per cell of a 4×4 grid: no box can reach IoU 0.5 with two GTs
            cells = rng.choice(16, size=min(g, 16), replace=False)
            cx, cy = (cells % 4) * size / 4, (cells // 4) * size / 4
            w = rng.uniform(8, size / 4 - 2, (cells.size, 2))
            G = np.stack([cx + 1, cy + 1, cx + 1 + w[:, 0], cy + 1 + w[:, 1]], 1)
        else:
            xy = rng.uniform(0, size, (g, 2))
            G = np.concatenate([xy, xy + rng.uniform(4, 120, (g, 2))], 1)
        d = int(rng.integers(0, max_det + 1))
        k = int(rng.integers(0, d + 1)) if len(G) else 0
        near = G[rng.integers(0, len(G), k)] + rng.normal(0, 4, (k, 4)) if k else np.zeros((0, 4))
        xy = rng.uniform(0, size, (d - k, 2))
        far = np.concatenate([xy, xy + rng.uniform(4, 120, (d - k, 2))], 1)
        D = np.concatenate([near, far])
        D[:, 2:] = np.maximum(D[:, 2:], D[:, :2] + 0.5)
        s = rng.random(len(D))
        if tie_scores:
            s = np.round(s * 5) / 5
        gts.append(G)
        dets.append(D)
        scores.append(s)
    return gts, dets, scores


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_equals_loop_reference(seed):
    rng = np.random.default_rng(seed)
    gts, dets, scores = random_case(rng, 120, tie_scores=seed % 2 == 1)
    for area_range in [None, *SIZE_RANGES.values()]:
        for max_boxes in (100, 7):
            v = average_precision(gts, dets, scores, max_boxes=max_boxes, area_range=area_range)
            r = average_precision_loop(gts, dets, scores, max_boxes=max_boxes, area_range=area_range)
            assert (v.num_gt, v.num_det, v.num_tp) == (r.num_gt, r.num_det, r.num_tp)
            np.testing.assert_allclose(v.precision, r.precision, atol=1e-6)
            np.testing.assert_allclose(v.recall, r.recall, atol=1e-6)
            if r.num_gt:
                assert abs(v.ap - r.ap) <= 1e-6
            else:
                assert math.isnan(v.ap)


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_pycocotools_ap50(seed):
    """With disjoint GTs (one per grid cell) the matching rules coincide, so the PR curves are the same.

    pycocotools averages the envelope p(r) at 101 recalls; VOC integrates it. For a non-increasing p on
    [0, 1] both the 101-point mean S/101 and the integral lie between the right and left Riemann sums
    (S - p(0))/100 and (S - p(1))/100, which differ by (p(0) - p(1))/100 <= 0.01: so |VOC - COCO| <= 0.01,
    and the 101-point value of our own curve must equal pycocotools' exactly.
    """
    rng = np.random.default_rng(100 + seed)
    gts, dets, scores = random_case(rng, 60, disjoint=True, tie_scores=seed % 2 == 1)
    ours = average_precision(gts, dets, scores)
    theirs = coco_ap(gts, dets, scores)
    assert ours.ap_101() == pytest.approx(theirs["ap50"], abs=1e-6)
    assert abs(ours.ap - theirs["ap50"]) <= 0.01 + 1e-9
    assert 0.0 < ours.ap < 1.0  # a case where the curve is not trivial


def test_coco_perfect_and_report_shape():
    gts = [b([0, 0, 10, 10], [100, 100, 300, 300]), b([40, 40, 90, 90])]
    scores = [np.array([0.9, 0.8]), np.array([0.7])]
    c = coco_ap(gts, gts, scores)
    assert c["ap"] == pytest.approx(1.0) and c["ap50"] == pytest.approx(1.0)
    rep = evaluate_detections(gts, gts, scores)
    assert rep["ap50"] == pytest.approx(1.0) and rep["num_images"] == 2
    assert set(rep["sizes"]) == {"small", "medium", "large"}
    assert rep["sizes"]["medium"]["ap50"] == pytest.approx(1.0)
    assert len(rep["pr_curve"]["recall"]) == 101 and rep["pr_curve"]["precision"][-1] == pytest.approx(1.0)


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError):
        average_precision([E], [E, E], [S0, S0])
    with pytest.raises(ValueError):
        average_precision([E], [b([0, 0, 1, 1])], [np.array([0.1, 0.2])])


def _tied_case(rng, n_img, uniform: bool, ties: str, degenerate: bool):
    """Random images for the exactness test: `uniform` gives every image the same detection count (the
    reshaped grid path), `ties` is "none", "tp_fp" (few score levels: TPs and FPs share scores) or
    "tp_only" (an exact copy of every GT, all scored 0.75, which no other box gets), `degenerate` adds
    zero-area boxes and duplicated GTs."""
    gts, dets, scores = random_case(rng, n_img, max_gt=6, max_det=30)
    if ties == "tp_only":
        scores = [np.concatenate([np.full(len(g), 0.75), rng.random(len(d)) * 0.5])[:30]
                  for g, d in zip(gts, dets)]
        dets = [np.concatenate([g, d])[:30] for g, d in zip(gts, dets)]
    if uniform:
        dets = [np.concatenate([d, np.tile(b([500, 500, 520, 520]), (30 - len(d), 1))]) for d in dets]
        scores = [np.concatenate([s, rng.random(30 - len(s))]) for s in scores]
    if ties == "tp_fp":
        scores = [np.round(s * 4) / 4 for s in scores]
    if degenerate:
        for d in dets[::3]:
            if len(d):
                d[0, 2] = d[0, 0]  # zero width
        for g in gts[::4]:
            if len(g) > 1:
                g[1] = g[0]  # two identical GTs: IoU ties between GTs
    return gts, dets, scores


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("ties", ["none", "tp_fp", "tp_only"])
@pytest.mark.parametrize("degenerate", [False, True])
def test_vectorised_equals_loop_reference_exactly(uniform, ties, degenerate):
    """The vectorised path gives the loop's curve bit for bit: equal or unequal detection counts per
    image, scores tied between TPs and FPs or among TPs, degenerate (zero-area) boxes."""
    rng = np.random.default_rng([int(uniform), ["none", "tp_fp", "tp_only"].index(ties), int(degenerate)])
    gts, dets, scores = _tied_case(rng, 150, uniform, ties, degenerate)
    for area_range in [None, SIZE_RANGES["medium"]]:
        for thr in (0.5, 0.0):
            v = average_precision(gts, dets, scores, iou_threshold=thr, area_range=area_range)
            r = average_precision_loop(gts, dets, scores, iou_threshold=thr, area_range=area_range)
            assert (v.num_gt, v.num_det, v.num_tp) == (r.num_gt, r.num_det, r.num_tp)
            assert np.array_equal(v.scores, r.scores)
            assert np.array_equal(v.precision, r.precision) and np.array_equal(v.recall, r.recall)
            assert v.ap == pytest.approx(r.ap, abs=1e-12)
            assert v.ap == voc_ap_from_curve(v.precision, v.recall)  # same terms, same order


def test_tied_scores_keep_input_order():
    """Equal scores rank in input order (image-major): an FP listed before a TP of the same score
    comes first in the curve, and after it when listed after."""
    gts = [b([0, 0, 10, 10])]
    tp, fp = b([0, 0, 10, 10]), b([50, 50, 60, 60])
    fp_first = average_precision(gts, [np.concatenate([fp, tp])], [np.array([0.5, 0.5])])
    tp_first = average_precision(gts, [np.concatenate([tp, fp])], [np.array([0.5, 0.5])])
    assert fp_first.precision.tolist() == [0.0, 0.5] and fp_first.ap == 0.5
    assert tp_first.precision.tolist() == [1.0, 0.5] and tp_first.ap == 1.0


def _property_case(rng):
    """Random images with everything the vectorised path treats specially: tied scores across TPs and
    FPs, images with no detections, no GT, or neither, more detections than max_boxes, exact GT copies,
    zero-area boxes and identical GTs."""
    n_img = int(rng.integers(1, 60))
    levels = int(rng.choice([0, 3, 10]))  # 0: continuous scores
    gts, dets, scores = [], [], []
    for _ in range(n_img):
        kind = rng.random()
        g = 0 if kind < 0.2 else int(rng.integers(1, 8))
        d = 0 if 0.2 <= kind < 0.35 else int(rng.integers(1, 130))
        xy = rng.uniform(0, 200, (g, 2))
        G = np.concatenate([xy, xy + rng.uniform(2, 80, (g, 2))], 1)
        if g > 1 and rng.random() < 0.2:
            G[1] = G[0]
        k = int(rng.integers(0, d + 1)) if g else 0
        near = G[rng.integers(0, g, k)] + rng.normal(0, 3, (k, 4)) * rng.integers(0, 2, (k, 1)) if k else E
        xy = rng.uniform(0, 200, (d - k, 2))
        D = np.concatenate([near, np.concatenate([xy, xy + rng.uniform(0, 80, (d - k, 2))], 1)])
        D[:, 2:] = np.maximum(D[:, 2:], D[:, :2])  # some zero width/height
        s = rng.random(d)
        if levels:
            s = np.round(s * levels) / levels
        gts.append(G)
        dets.append(D)
        scores.append(s)
    return gts, dets, scores


def test_vectorised_equals_loop_reference_property():
    """60 random configurations: curve, scores, counts and AP identical to the per-image loop, for all
    size ranges and two thresholds."""
    rng = np.random.default_rng(2026)
    for case in range(60):
        gts, dets, scores = _property_case(rng)
        max_boxes = int(rng.choice([100, 10]))
        for area_range in [None, SIZE_RANGES["small"], SIZE_RANGES["medium"]]:
            for thr in (0.5, 0.0):
                v = average_precision(gts, dets, scores, iou_threshold=thr, max_boxes=max_boxes,
                                      area_range=area_range)
                r = average_precision_loop(gts, dets, scores, iou_threshold=thr, max_boxes=max_boxes,
                                           area_range=area_range)
                where = f"case {case}, range {area_range}, thr {thr}"
                assert (v.num_gt, v.num_det, v.num_tp) == (r.num_gt, r.num_det, r.num_tp), where
                assert np.array_equal(v.scores, r.scores), where
                assert np.array_equal(v.precision, r.precision), where
                assert np.array_equal(v.recall, r.recall), where
                assert v.ap == r.ap or (math.isnan(v.ap) and math.isnan(r.ap)), where


def test_vectorised_equals_loop_reference_across_blocks(monkeypatch):
    """Detections split over many IoU blocks (the benchmark's scale, in small blocks)."""
    from spotdiff.evaluation import metrics

    monkeypatch.setattr(metrics, "_BLOCK_DETECTIONS", 1000)
    rng = np.random.default_rng(5)
    gts, dets, scores = random_case(rng, 800, max_gt=10, max_det=100)
    dets = [np.resize(d, (100, 4)) if len(d) else d for d in dets]  # 100 per image, repeats included
    scores = [rng.random(len(d)) for d in dets]
    v = average_precision(gts, dets, scores)
    r = average_precision_loop(gts, dets, scores)
    assert (v.num_gt, v.num_det, v.num_tp) == (r.num_gt, r.num_det, r.num_tp)
    assert np.array_equal(v.scores, r.scores) and np.array_equal(v.precision, r.precision)
    assert np.array_equal(v.recall, r.recall) and v.ap == r.ap


def test_ap_benchmark_script_runs_and_agrees(tmp_path):
    """`benchmarks/bench_ap.py` on a small input: exit 0 (ours agrees with both loops to 1e-6), and
    its JSON carries wall and CPU timings and both ratios for each baseline."""
    import json
    import subprocess
    import sys

    from helpers.env import REPO_ROOT, subprocess_env

    out = tmp_path / "ap.json"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_ap.py"), "--pairs", "40", "--repeats", "1",
         "--repeats-readable", "1", "--results", str(out)],
        capture_output=True, text=True, timeout=300, env=subprocess_env(), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["equal_to_1e-6"] is True and result["images"] == 80
    for row in result["rows"]:
        assert row["max_abs_ap_diff"] <= 1e-6
        for key in ("seconds_ours_median", "seconds_baseline", "cpu_seconds_ours_median", "cpu_seconds_baseline"):
            assert row[key] > 0
        assert row["speedup_cpu"] == pytest.approx(row["cpu_seconds_baseline"] / row["cpu_seconds_ours_median"])
