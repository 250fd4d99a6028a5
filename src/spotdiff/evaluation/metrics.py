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
vectorises: IoU of every (detection, GT-of-its-image) pair in cache-sized chunks of images, one GT
slot at a time (`_matched_gt`); "first detection in global score order per GT" as "highest score,
then lowest index" per GT (`_first_matches`), since a GT's detections are all in its image; and the
global order itself from one value sort of the scores (`_rank`), done by 16-bit buckets and short
row sorts (`_bucket_sort`) where numpy's own sort of a long array is slow. `average_precision_loop`
is the straightforward per-image loop kept as the readable reference (tests check the two agree bit
for bit, `benchmarks/bench_ap.py` to 1e-6).

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
    """Box areas, the same arithmetic as `spotdiff.boxes.box_areas` (np.maximum is faster than clip)."""
    return _areas_planes(boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3])


def _areas_planes(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray) -> np.ndarray:
    return np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)


def _in_range(areas: np.ndarray, area_range: tuple[float, float] | None) -> np.ndarray:
    if area_range is None:
        return np.ones(areas.shape, dtype=bool)
    lo, hi = area_range
    return (areas >= lo) & (areas < hi)


def _descending(scores: np.ndarray) -> np.ndarray:
    """Indices sorting scores high to low, ties in input order (same result as a stable sort).

    A quicksort, then runs of equal scores are put back in index order with one integer sort of
    run_id·N + index (cheaper than numpy's stable float sort, which is timsort).
    """
    n = scores.size
    order = np.argsort(-scores)
    s = scores[order]
    eq = s[1:] == s[:-1]
    if n > 1 and eq.any():
        run = np.concatenate(([0], np.cumsum(~eq)))
        order = np.sort(run * n + order) % n
    return order


# Detections × GT slots computed per chunk of images; ~32k values per temporary keeps them in cache.
_CHUNK_ELEMENTS = 1 << 15


def _matched_gt(dets: np.ndarray, det_start: np.ndarray, nd: np.ndarray, gts: np.ndarray,
                gt_start: np.ndarray, ng: np.ndarray, iou_threshold: float) -> np.ndarray:
    """For every detection (image-major), the GT it matches, or -1.

    The match is the GT of its image with the highest IoU (first index on ties) when that IoU is
    >= `iou_threshold`. Images are sorted by GT count (most first) and taken in chunks, each laid out
    as an images × detections grid; GT slot k is then compared with the leading rows of the grid
    (those images have a k-th GT), keeping a running max that only a strictly higher IoU replaces --
    the argmax's first-index rule -- with every array contiguous and no GT padding.
    """
    matched_gt = np.full(dets.shape[0], -1, dtype=np.int64)
    sel = np.flatnonzero((ng > 0) & (nd > 0))
    if sel.size == 0:
        return matched_gt
    sel = sel[np.argsort(-ng[sel], kind="stable")]
    g_cols = [np.ascontiguousarray(gts[:, k]) for k in range(4)] + [_areas(gts)]
    g_positive = g_cols[4].min() > 0 and g_cols[4].max() < np.inf
    dmax = int(nd[sel].max())
    # Every image with the same number of detections: the grid is a reshape and a chunk a row gather.
    uniform = bool((nd == dmax).all())
    if uniform:
        det_grid = dets.reshape(nd.size, dmax, 4)
        grid_gt = matched_gt.reshape(nd.size, dmax)
    rows = max(1, _CHUNK_ELEMENTS // dmax)
    t1, t2, t3, best = (np.empty((rows, dmax)) for _ in range(4))
    zeros = np.zeros((rows, dmax))  # clamping against an array is ~3× faster than against a scalar 0
    better = np.empty((rows, dmax), dtype=bool)
    best_slot = np.empty((rows, dmax), dtype=np.int64)
    ar = np.arange(dmax)
    for lo in range(0, sel.size, rows):
        imgs = sel[lo:lo + rows]
        n_img, gmax = imgs.size, int(ng[imgs[0]])
        if uniform:
            block = np.take(det_grid, imgs, axis=0)
        else:
            didx = det_start[imgs][:, None] + ar
            valid = ar < nd[imgs][:, None]
            didx = np.where(valid, didx, det_start[imgs][:, None])  # padding repeats the first box
            block = dets[didx]
        x1, y1, x2, y2 = np.moveaxis(block, 2, 0).copy()  # contiguous coordinate planes
        area = _areas_planes(x1, y1, x2, y2)
        # With every area positive and finite, union > 0 for every pair (intersection <= the smaller
        # area, also in floating point), so IoU is a plain division; else pairs with union 0 get 0.
        positive = g_positive and area.min() > 0 and area.max() < np.inf
        # Then, with a positive threshold, the height needs no clamp: where it is negative the
        # intersection (width clamped, times height) and the IoU are <= 0, below any match, and every
        # IoU that can match (> 0) has the same bits as with the clamp.
        clamp_h = not (positive and iou_threshold > 0)
        gidx = gt_start[imgs][:, None] + np.minimum(np.arange(gmax), ng[imgs][:, None] - 1)
        gx1, gy1, gx2, gy2, garea = (col[gidx] for col in g_cols)
        # Images with a k-th GT: a prefix of the chunk (sorted by GT count, most first).
        has_slot = np.searchsorted(-ng[imgs], -np.arange(gmax), side="left")
        for k, c in enumerate(has_slot.tolist()):
            iw = np.minimum(x2[:c], gx2[:c, k, None], out=t1[:c])
            iw -= np.maximum(x1[:c], gx1[:c, k, None], out=t2[:c])
            np.maximum(iw, zeros[:c], out=iw)
            ih = np.minimum(y2[:c], gy2[:c, k, None], out=t2[:c])
            ih -= np.maximum(y1[:c], gy1[:c, k, None], out=t3[:c])
            if clamp_h:
                np.maximum(ih, zeros[:c], out=ih)
            iw *= ih  # intersection
            union = np.add(area[:c], garea[:c, k, None], out=t3[:c])
            union -= iw
            iou = best[:c] if k == 0 else t2[:c]
            if positive:
                np.divide(iw, union, out=iou)
            else:
                iou.fill(0.0)
                np.divide(iw, union, out=iou, where=union > 0)
            if k == 0:
                best_slot[:c] = 0
            else:
                np.greater(iou, best[:c], out=better[:c])
                np.maximum(best[:c], iou, out=best[:c])  # = iou where better (no NaN here)
                np.copyto(best_slot[:c], k, where=better[:c])
        found = np.where(best[:n_img] >= iou_threshold, gt_start[imgs][:, None] + best_slot[:n_img], -1)
        if uniform:
            grid_gt[imgs] = found
        else:
            matched_gt[didx[valid]] = found[valid]
    return matched_gt


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


# Value sort by buckets: above this many values, and with at most _BUCKET_CAP values per bucket.
_BUCKET_SORT_MIN = 1 << 12
_BUCKET_CAP = 128


def _sort_values(x: np.ndarray) -> np.ndarray:
    """`np.sort(x)` (ascending values) of a 1-D float64 array without NaN; `_bucket_sort` when it can."""
    out = _bucket_sort(x) if x.size >= _BUCKET_SORT_MIN else None
    return np.sort(x) if out is None else out


def _bucket_sort(x: np.ndarray) -> np.ndarray | None:
    """The values of a 1-D float64 array without NaN in ascending order, or None if the data do not fit.

    numpy's sort of a long float64 array partitions with AVX-512 compress-stores, which some CPUs
    (AMD Zen 4) run slowly, while rows of <= 256 values go through a sorting network at a fraction
    of the cost per value. So: one linear bucket per ~16 values, `floor((x - min) * (buckets - 1) /
    (max - min))` (monotone in x, also in floating point: every step rounds monotonically), values
    laid out bucket by bucket with one radix argsort of the 16-bit bucket ids, then rows of 2·cap
    values sorted twice, the second pass shifted by cap. With at most cap values per bucket every
    bucket lies inside one row of one of the passes, and a pass only reorders values inside the
    buckets it covers, so the result is sorted. None when a bucket holds over cap values (values
    clustered in a narrow range, or many equal values) or the range is infinite.
    """
    n = x.size
    if n == 0:
        return None
    lo, hi = x.min(), x.max()
    buckets = max(2, min(1 << 16, n // 16))
    with np.errstate(all="ignore"):
        scale = (buckets - 1) / (hi - lo)
    if not (np.isfinite(scale) and scale > 0):
        return None
    cap = _BUCKET_CAP
    size = -(-(n + cap) // (2 * cap)) * 2 * cap  # rows of 2·cap, and room for the shifted pass
    out = np.empty(size)
    t = np.subtract(x, lo, out=out[:n])  # scratch first, then the output
    t *= scale  # in [0, buckets - 1] up to one rounding: below 2**16
    bucket = t.astype(np.uint16)
    if np.bincount(bucket, minlength=buckets).max() > cap:
        return None
    np.take(x, np.argsort(bucket, kind="stable"), out=out[:n])  # stable on uint16: a radix sort
    out[n:] = np.inf  # padding, >= every value: it stays at the end
    out.reshape(-1, 2 * cap).sort(axis=1)
    out[cap:size - cap].reshape(-1, 2 * cap).sort(axis=1)
    return out[:n]


def _rank(scores: np.ndarray, is_tp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(TP flags, scores) in global order: scores high to low, ties in input order.

    A value sort of the scores, not an argsort (about half the time): a TP's place is found by
    searching its score, which is exact unless some FP has the same score as a TP (then their input
    order matters and the stable argsort `_descending` decides). Ties among FPs only, or among TPs
    only, leave the same flags in either order.
    """
    ascending = _sort_values(scores)
    tp_scores = _sort_values(scores[is_tp])
    lo = np.searchsorted(ascending, tp_scores, side="left")
    if tp_scores.size > 1 and np.any(tp_scores[1:] == tp_scores[:-1]):  # TPs sharing a score
        tp_lo = np.searchsorted(tp_scores, tp_scores, side="left")
        tp_hi = np.searchsorted(tp_scores, tp_scores, side="right")
        place = lo + np.arange(tp_scores.size) - tp_lo  # the i-th TP of a score: lo + i
        end = lo + tp_hi - tp_lo  # the m TPs of a score take lo .. end - 1 if no FP has that score
    else:  # each TP score held once among the TPs
        place, end = lo, lo + 1
    inside = end < scores.size
    if np.any(ascending[end[inside]] == tp_scores[inside]):  # a score held by a TP and an FP
        order = _descending(scores)
        return is_tp[order], scores[order]
    flags = np.zeros(scores.size, dtype=bool)  # in descending order (contiguous for the cumsum)
    flags[scores.size - 1 - place] = True
    return flags, ascending[::-1]


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
    det_start = np.concatenate(([0], np.cumsum(nd)[:-1])).astype(np.int64)
    gt_start = np.concatenate(([0], np.cumsum(ng)[:-1])).astype(np.int64)

    matched_gt = _matched_gt(dets, det_start, nd, gts, gt_start, ng, iou_threshold)
    gt_in = _in_range(_areas(gts), area_range)
    num_gt = int(gt_in.sum())
    is_tp = _first_matches(matched_gt, scores, gts.shape[0])
    if area_range is not None:
        # Ignored: matched to an out-of-range GT, or unmatched and itself out of range.
        matched = matched_gt >= 0
        ignored = np.where(matched, ~gt_in[np.maximum(matched_gt, 0)] if gts.size else False,
                           ~_in_range(_areas(dets), area_range))
        scores, is_tp = scores[~ignored], is_tp[~ignored]
    # The boxes (32 MB for 1 M detections) and matches are done with: free them before the sort and
    # the curve allocate theirs, so those reuse pages instead of faulting in new ones.
    del dets, matched_gt
    tp_sorted, scores_sorted = _rank(scores, is_tp)
    del scores, is_tp
    return _result(tp_sorted, scores_sorted, num_gt)


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
