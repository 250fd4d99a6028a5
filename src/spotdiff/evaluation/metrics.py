"""Detection metrics for change detection: the paper's VOC AP@0.5 (vectorised), COCO AP via pycocotools.

The paper's protocol (and the authors' `utils/voc_eval.py`, the chainercv/FCOS VOC code):
- one class ("changed object"); both images of every pair are pooled as separate images, so callers
  pass per-image lists in the order [pair0.a, pair0.b, pair1.a, pair1.b, ...];
- up to `max_boxes` (100) detections per image, the top ones by score; no score threshold, no NMS;
- matching per image in score order: a detection is matched to the ground-truth box it overlaps
  most (argmax IoU over *all* GT boxes of its image, first index on ties); it is a true positive
  when that IoU is >= the threshold (0.5) and that GT box is not taken yet by a higher-scored
  detection; otherwise (IoU too low, or the argmax GT already taken: a duplicate) a false positive.
  Like the VOC devkit, a detection whose argmax GT is taken does NOT fall back to its second-best GT
  (COCO does; see `coco_ap`). Ties in score keep the input order (stable sorts everywhere).
- AP = area under the monotone (interpolated) precision envelope, all points (VOC 2010+):
  `sum over recall steps of (r_{i+1} - r_i) * max(precision at recall >= r_{i+1})`.
- Boxes are xyxy with exclusive x2/y2 (`spotdiff.boxes`), so IoU has no "+1" pixel term; the
  reference code added 1 to x2/y2 of both sets (VOC's inclusive integer boxes), which changes IoU by
  a fraction of a pixel per side.

Because the VOC rule matches each detection to its argmax GT regardless of order, the whole thing
vectorises: the IoU of every detection with every GT of its image (`_matched_gt`), "first detection in global score order per GT" as "highest score, then lowest
index" per GT (`_first_matches`), since a GT's detections are all in its image, and one stable sort
of the scores for the curve. `average_precision_loop` is the straightforward per-image loop kept as
the readable reference (tests check the two agree bit for bit).

No GT at all: AP is undefined and returned as NaN (`num_gt == 0`); callers report it as missing.

Per-size breakdown (`size_breakdown`, COCO thresholds 32², 96² on the GT box area in that image's
pixels, half-open ranges [lo, hi)): GT boxes outside the range are "ignored" like VOC's difficult
boxes -- a detection whose matched (argmax, IoU >= thr) GT is ignored counts neither as TP nor FP --
and an unmatched detection counts as a false positive only when its own area is inside the range
(COCO's rule for unmatched detections). The paper reports COCO-Inpainted small/medium/large as
separate test sets, so for it "per size" mostly means "per test subset"; this helper is the per-box
view on any one set.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spotdiff.boxes import box_areas, iou_matrix, xyxy_to_xywh

SIZE_RANGES: dict[str, tuple[float, float]] = {
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, math.inf),
}


@dataclass
class APResult:
    """VOC AP with its precision/recall curve (points in global score order, ignored detections dropped)."""

    ap: float
    precision: np.ndarray  # precision after each counted detection
    recall: np.ndarray  # recall after each counted detection (zeros when num_gt == 0)
    scores: np.ndarray  # score of each counted detection (descending)
    num_gt: int
    num_det: int  # counted detections (after the per-image top-k and size-range ignoring)
    num_tp: int

    def envelope(self) -> np.ndarray:
        """The monotone (interpolated) precision: max precision at any recall >= this point's."""
        if self.precision.size == 0:
            return self.precision.copy()
        return np.maximum.accumulate(self.precision[::-1])[::-1]

    def ap_101(self) -> float:
        """COCO-style 101-point interpolated AP of this same curve (what pycocotools reports)."""
        if self.num_gt == 0:
            return math.nan
        env = self.envelope()
        thresholds = np.linspace(0.0, 1.0, 101)
        idx = np.searchsorted(self.recall, thresholds, side="left")
        vals = np.zeros_like(thresholds)
        ok = idx < env.size
        vals[ok] = env[idx[ok]]
        return float(vals.mean())

    def pr_curve(self, points: int | None = None) -> dict[str, list[float]]:
        """{"recall", "precision"} for plotting: the raw curve, or the envelope at `points` recalls."""
        if points is None:
            return {"recall": self.recall.tolist(), "precision": self.precision.tolist()}
        r = np.linspace(0.0, 1.0, points)
        env = self.envelope()
        idx = np.searchsorted(self.recall, r, side="left")
        p = np.zeros_like(r)
        ok = idx < env.size
        p[ok] = env[idx[ok]]
        return {"recall": r.tolist(), "precision": p.tolist()}

    def summary(self) -> dict[str, float | int | None]:
        return {
            "ap50": None if math.isnan(self.ap) else float(self.ap),
            "num_gt": int(self.num_gt),
            "num_det": int(self.num_det),
            "num_tp": int(self.num_tp),
            "max_recall": float(self.recall[-1]) if self.recall.size and self.num_gt else 0.0,
        }


def _check_inputs(gt_boxes, det_boxes, det_scores) -> None:
    if not (len(gt_boxes) == len(det_boxes) == len(det_scores)):
        raise ValueError(
            f"per-image lists differ in length: gt {len(gt_boxes)}, boxes {len(det_boxes)}, "
            f"scores {len(det_scores)}")


def _flatten(per_image: Sequence, width: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-image arrays (N×width, or N when width is None); return (values, counts)."""
    ndim = 1 if width is None else 2
    try:  # fast path: every item already N×width (or N); one concatenate, no per-item checks
        values = np.concatenate(per_image, axis=0) if len(per_image) else None
    except ValueError:  # mixed shapes (e.g. a flat empty box list): normalise each item below
        values = None
    if values is not None and values.ndim == ndim and (width is None or values.shape[1] == width):
        counts = np.fromiter(map(len, per_image), dtype=np.int64, count=len(per_image))
        return values.astype(np.float64, copy=False), counts
    arrays = [np.asarray(a, dtype=np.float64) for a in per_image]
    if width is None:
        arrays = [a.reshape(-1) for a in arrays]
        empty = np.zeros((0,), dtype=np.float64)
    else:
        arrays = [a.reshape(-1, width) for a in arrays]
        empty = np.zeros((0, width), dtype=np.float64)
    counts = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    values = np.concatenate(arrays, axis=0) if arrays else empty
    return values, counts


def voc_ap_from_curve(precision: np.ndarray, recall: np.ndarray) -> float:
    """All-point interpolated AP (area under the monotone precision envelope)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], np.nan_to_num(precision), [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _result(tp_sorted: np.ndarray, scores_sorted: np.ndarray, num_gt: int) -> APResult:
    n = tp_sorted.size
    tp_int = np.cumsum(tp_sorted, dtype=np.int64)
    num_tp = int(tp_int[-1]) if n else 0
    tp = tp_int.astype(np.float64)  # exact; faster than a float cumsum
    del tp_int
    # (Divisions written into buffers already at hand: fewer fresh pages for a 1 M-point curve.)
    precision = np.arange(1.0, n + 1.0)
    np.divide(tp, precision, out=precision)  # TP + FP after each detection, exact in float64
    if num_gt > 0:
        recall = np.divide(tp, num_gt, out=tp)
        ap = _ap_at_true_positives(precision, recall, tp_sorted)
    else:
        recall = np.zeros(n)
        ap = math.nan
    return APResult(ap=ap, precision=precision, recall=recall, scores=scores_sorted,
                    num_gt=int(num_gt), num_det=int(n), num_tp=num_tp)


def _ap_at_true_positives(precision: np.ndarray, recall: np.ndarray, tp_sorted: np.ndarray) -> float:
    """`voc_ap_from_curve` for a curve from `_result`, summing the very same terms in the same order.

    Recall steps exactly at the true positives (and, when it ends below 1, at the closing sentinel,
    whose envelope is 0), and precision has no NaN, so the padded copies need not be built. Between
    two true positives precision only falls, so the envelope at a true positive is the running max
    over the true positives after it.
    """
    at = np.flatnonzero(tp_sorted)
    envelope = np.maximum.accumulate(precision[at][::-1])[::-1]
    step_end = recall[at]
    step_start = np.zeros(at.size)
    step_start[1:] = step_end[:-1]  # the recall before each step: the previous step's
    terms = (step_end - step_start) * envelope
    if recall.size == 0 or recall[-1] != 1.0:
        terms = np.append(terms, 0.0)  # (1 - last recall) * 0
    return float(np.sum(terms))


def _areas(boxes: np.ndarray) -> np.ndarray:
    """Box areas of the last axis's xyxy, the arithmetic of `spotdiff.boxes.box_areas`."""
    return (boxes[..., 2] - boxes[..., 0]).clip(0) * (boxes[..., 3] - boxes[..., 1]).clip(0)


def _in_range(areas: np.ndarray, area_range: tuple[float, float] | None) -> np.ndarray:
    if area_range is None:
        return np.ones(areas.shape, dtype=bool)
    lo, hi = area_range
    return (areas >= lo) & (areas < hi)


# Detections per block of the IoU computation: bounds its temporaries (a few MB per GT of an image).
_BLOCK_DETECTIONS = 1 << 16


def _matched_gt(dets: np.ndarray, det_img: np.ndarray, gts: np.ndarray, gt_start: np.ndarray,
                ng: np.ndarray, iou_threshold: float) -> np.ndarray:
    """For every detection, the GT it matches, or -1: the GT of its image with the highest IoU (first
    index on ties) when that IoU is >= `iou_threshold`.

    Every (detection, GT of its image) pair, detection-major, as flat coordinate columns; IoU with the
    arithmetic of `spotdiff.boxes.iou_matrix` (the same bits); then per detection the segment's max
    and the first pair that reaches it."""
    matched = np.full(dets.shape[0], -1, dtype=np.int64)
    with_gt = np.flatnonzero(ng[det_img])
    d_cols = [np.ascontiguousarray(dets[:, k]) for k in range(4)]
    g_cols = [np.ascontiguousarray(gts[:, k]) for k in range(4)]
    for lo in range(0, with_gt.size, _BLOCK_DETECTIONS):
        sel = with_gt[lo:lo + _BLOCK_DETECTIONS]
        count = ng[det_img[sel]]
        seg = np.concatenate(([0], np.cumsum(count)[:-1]))  # each detection's first pair
        pair_det = np.repeat(sel, count)
        pair_gt = np.repeat(gt_start[det_img[sel]] - seg, count) + np.arange(pair_det.size)
        dx1, dy1, dx2, dy2 = (c[pair_det] for c in d_cols)
        gx1, gy1, gx2, gy2 = (c[pair_gt] for c in g_cols)
        inter = ((np.minimum(dx2, gx2) - np.maximum(dx1, gx1)).clip(0)
                 * (np.minimum(dy2, gy2) - np.maximum(dy1, gy1)).clip(0))
        union = (dx2 - dx1).clip(0) * (dy2 - dy1).clip(0) + (gx2 - gx1).clip(0) * (gy2 - gy1).clip(0) - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        best = np.maximum.reduceat(iou, seg)
        first = np.minimum.reduceat(np.where(iou == np.repeat(best, count), np.arange(iou.size), iou.size), seg)
        matched[sel] = np.where(best >= iou_threshold, pair_gt[first], -1)
    return matched


def _first_matches(matched_gt: np.ndarray, scores: np.ndarray, n_gt: int) -> np.ndarray:
    """True for each detection that is the first, in global order, matched to its GT (a true positive).

    All detections matched to one GT lie in one image, so "first in score order, ties in input
    order" is "highest score, then lowest index": two scattered reductions instead of a global sort.
    """
    tp = np.zeros(matched_gt.size, dtype=bool)
    idx = np.flatnonzero(matched_gt >= 0)
    if idx.size == 0:
        return tp
    gt, sc = matched_gt[idx], scores[idx]
    top = np.full(n_gt, -np.inf)
    np.maximum.at(top, gt, sc)
    at_top = sc == top[gt]
    first = np.full(n_gt, matched_gt.size, dtype=np.int64)
    np.minimum.at(first, gt[at_top], idx[at_top])
    tp[first[first < matched_gt.size]] = True
    return tp


def average_precision(
    gt_boxes: Sequence[np.ndarray],
    det_boxes: Sequence[np.ndarray],
    det_scores: Sequence[np.ndarray],
    iou_threshold: float = 0.5,
    max_boxes: int = 100,
    area_range: tuple[float, float] | None = None,
) -> APResult:
    """VOC all-point AP over a list of images (vectorised; see the module docstring for the rules).

    gt_boxes[i]: G_i×4 xyxy; det_boxes[i]: D_i×4 xyxy; det_scores[i]: D_i scores. Any D_i and G_i
    (zero included). `area_range` = (lo, hi) restricts evaluation to GT boxes with lo <= area < hi.
    """
    _check_inputs(gt_boxes, det_boxes, det_scores)
    n_img = len(gt_boxes)
    dets, nd = _flatten(det_boxes, 4)
    scores, ns = _flatten(det_scores, None)
    if not np.array_equal(nd, ns):
        bad = int(np.flatnonzero(nd != ns)[0])
        raise ValueError(f"image {bad}: {nd[bad]} boxes but {ns[bad]} scores")
    if np.isnan(scores).any():
        raise ValueError("detection scores contain NaN")
    gts, ng = _flatten(gt_boxes, 4)

    # Per-image top-k by score (stable: ties keep input order). Skipped when no image has too many.
    if n_img and nd.max(initial=0) > max_boxes:
        det_img = np.repeat(np.arange(n_img), nd)
        order = np.lexsort((-scores, det_img))
        det_start = np.concatenate(([0], np.cumsum(nd)[:-1]))
        keep = order[np.arange(order.size) - det_start[det_img] < max_boxes]
        keep.sort()  # back to input order within each image
        dets, scores = dets[keep], scores[keep]
        nd = np.minimum(nd, max_boxes)
    gt_start = np.concatenate(([0], np.cumsum(ng)[:-1])).astype(np.int64)
    det_img = np.repeat(np.arange(n_img), nd)

    matched_gt = _matched_gt(dets, det_img, gts, gt_start, ng, iou_threshold)
    gt_in = _in_range(_areas(gts), area_range)
    num_gt = int(gt_in.sum())
    is_tp = _first_matches(matched_gt, scores, gts.shape[0])
    if area_range is not None:
        # Ignored: matched to an out-of-range GT, or unmatched and itself out of range.
        matched = matched_gt >= 0
        ignored = np.where(matched, ~gt_in[np.maximum(matched_gt, 0)] if gts.size else False,
                           ~_in_range(_areas(dets), area_range))
        scores, is_tp = scores[~ignored], is_tp[~ignored]
    order = np.argsort(-scores, kind="stable")  # high to low, ties in input order
    return _result(is_tp[order], scores[order], num_gt)


def average_precision_loop(
    gt_boxes: Sequence[np.ndarray],
    det_boxes: Sequence[np.ndarray],
    det_scores: Sequence[np.ndarray],
    iou_threshold: float = 0.5,
    max_boxes: int = 100,
    area_range: tuple[float, float] | None = None,
) -> APResult:
    """The same metric written as the plain per-image loop of the VOC devkit (readable reference)."""
    _check_inputs(gt_boxes, det_boxes, det_scores)
    all_scores: list[float] = []
    all_match: list[int] = []  # 1 TP, 0 FP, -1 ignored
    num_gt = 0
    for gts, boxes, scores in zip(gt_boxes, det_boxes, det_scores):
        gts = np.asarray(gts, dtype=np.float64).reshape(-1, 4)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        order = np.argsort(-scores, kind="stable")[:max_boxes]
        boxes, scores = boxes[order], scores[order]
        gt_ok = [area_range is None or area_range[0] <= a < area_range[1] for a in box_areas(gts)]
        num_gt += sum(gt_ok)
        taken = [False] * len(gts)
        ious = iou_matrix(boxes, gts)
        for d in range(len(boxes)):
            all_scores.append(float(scores[d]))
            j = int(np.argmax(ious[d])) if len(gts) else -1
            if j >= 0 and ious[d, j] >= iou_threshold:
                if not gt_ok[j]:
                    all_match.append(-1)
                elif not taken[j]:
                    taken[j] = True
                    all_match.append(1)
                else:
                    all_match.append(0)
            else:
                area = float(box_areas(boxes[d])[0])
                inside = area_range is None or area_range[0] <= area < area_range[1]
                all_match.append(0 if inside else -1)
    s = np.array(all_scores, dtype=np.float64)
    mt = np.array(all_match, dtype=np.int64)
    order = np.argsort(-s, kind="stable")
    s, mt = s[order], mt[order]
    keep = mt >= 0
    return _result(mt[keep] == 1, s[keep], num_gt)


def size_breakdown(
    gt_boxes: Sequence[np.ndarray],
    det_boxes: Sequence[np.ndarray],
    det_scores: Sequence[np.ndarray],
    iou_threshold: float = 0.5,
    max_boxes: int = 100,
) -> dict[str, APResult]:
    """VOC AP per COCO size class of the GT boxes (small < 32² <= medium < 96² <= large)."""
    return {name: average_precision(gt_boxes, det_boxes, det_scores, iou_threshold, max_boxes, rng)
            for name, rng in SIZE_RANGES.items()}


def coco_ap(
    gt_boxes: Sequence[np.ndarray],
    det_boxes: Sequence[np.ndarray],
    det_scores: Sequence[np.ndarray],
    max_boxes: int = 100,
) -> dict[str, float]:
    """COCO metrics from pycocotools' COCOeval (GT/DT json built in memory, one category).

    Returns {"ap": AP@[.5:.95], "ap50", "ap75", "ap_small", "ap_medium", "ap_large"} (NaN where there
    is no GT). Differences from `average_precision`: 101-point interpolation, a detection falls back
    to its best *unmatched* GT, and COCO's closed size ranges.
    """
    _check_inputs(gt_boxes, det_boxes, det_scores)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    nan = {k: math.nan for k in ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")}
    images, annotations, results = [], [], []
    ann_id = 1  # COCOeval treats id 0 as "unmatched": ids must start at 1
    for i, (gts, boxes, scores) in enumerate(zip(gt_boxes, det_boxes, det_scores)):
        images.append({"id": i + 1})
        for x, y, w, h in xyxy_to_xywh(gts).tolist():
            annotations.append({"id": ann_id, "image_id": i + 1, "category_id": 1, "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0})
            ann_id += 1
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        order = np.argsort(-scores, kind="stable")[:max_boxes]
        xywh = xyxy_to_xywh(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[order])
        for (x, y, w, h), s in zip(xywh.tolist(), scores[order].tolist()):
            results.append({"image_id": i + 1, "category_id": 1, "bbox": [x, y, w, h], "score": s})
    if not annotations:
        return nan
    if not results:
        return {k: 0.0 for k in nan}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": 1, "name": "change"}]}
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.maxDets = [1, 10, max_boxes]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"]  # T×R×K×A×M

    def mean_ap(t_index, area_index: int) -> float:
        p = prec[t_index, :, 0, area_index, -1]
        p = p[p > -1]
        return float(p.mean()) if p.size else math.nan

    t50 = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
    t75 = int(np.argmin(np.abs(ev.params.iouThrs - 0.75)))
    return {"ap": mean_ap(slice(None), 0), "ap50": mean_ap(t50, 0), "ap75": mean_ap(t75, 0),
            "ap_small": mean_ap(slice(None), 1), "ap_medium": mean_ap(slice(None), 2),
            "ap_large": mean_ap(slice(None), 3)}


def evaluate_detections(
    gt_boxes: Sequence[np.ndarray],
    det_boxes: Sequence[np.ndarray],
    det_scores: Sequence[np.ndarray],
    iou_threshold: float = 0.5,
    max_boxes: int = 100,
    coco: bool = True,
    curve_points: int = 101,
) -> dict:
    """One report: VOC AP@thr (the paper's number), COCO columns, per-size VOC AP and the PR curve."""
    res = average_precision(gt_boxes, det_boxes, det_scores, iou_threshold, max_boxes)
    out: dict = {"num_images": len(gt_boxes), **res.summary()}
    out["sizes"] = {k: v.summary() for k, v in
                    size_breakdown(gt_boxes, det_boxes, det_scores, iou_threshold, max_boxes).items()}
    if coco:
        c = coco_ap(gt_boxes, det_boxes, det_scores, max_boxes)
        out["coco"] = {k: (None if math.isnan(v) else v) for k, v in c.items()}
    out["pr_curve"] = res.pr_curve(curve_points)
    return out
