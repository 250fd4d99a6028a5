"""Scores of the evaluate stage: each test set (and subset) by the paper's protocol, subsets pooled.

VOC AP at `evaluate.iou_threshold` with both images of every pair pooled, no NMS and no score
threshold (`spotdiff.evaluation.metrics.average_precision`), and COCO AP@[.5:.95] (pycocotools) as a
second column. A test set with subsets (COCO-Inpainted small / medium / large) also gets "all", its
subsets pooled (the paper's headline number).

AP is over the pairs with a change. The no-change pairs (`TestPair.no_change`: the set's own format
says nothing changed) are scored apart: `false_alarms` = the boxes with score >= `FALSE_ALARM_SCORE`
in both images of a no-change pair, per no-change pair (null when the set has none), and
`no_change_pairs` their number; `pairs` counts the pairs with a change.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from spotdiff.evaluation.metrics import average_precision, coco_ap
from spotdiff.evaluation.runner import SetResult

CURVE_POINTS = 101
FALSE_ALARM_SCORE = 0.5  # a box at or above this score is one a user would be shown


def _nan_to_none(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def score(gt: Sequence[np.ndarray], dets: Sequence[np.ndarray], scores: Sequence[np.ndarray],
          iou_threshold: float, max_boxes: int) -> tuple[dict, Any]:
    """({"ap50", "coco_ap", "coco_ap50", "max_recall", "num_gt", "pairs"}, the VOC APResult)."""
    res = average_precision(gt, dets, scores, iou_threshold=iou_threshold, max_boxes=max_boxes)
    coco = coco_ap(gt, dets, scores, max_boxes=max_boxes)
    out = {
        "ap50": _nan_to_none(res.ap),
        "coco_ap": _nan_to_none(coco["ap"]),
        "coco_ap50": _nan_to_none(coco["ap50"]),
        "max_recall": float(res.recall[-1]) if res.recall.size and res.num_gt else 0.0,
        "num_gt": int(res.num_gt),
        "pairs": len(gt) // 2,
    }
    return out, res


def _changed_pairs(r: SetResult) -> list[bool]:
    """Per pair: does it have a change (False for a no-change pair)."""
    n = len(r.gt) // 2
    flags = list(r.no_change) or [False] * n
    if len(flags) != n:
        raise ValueError(f"{r.name}: {len(flags)} no-change flags for {n} pairs")
    return [not f for f in flags]


def pool(results: Sequence[SetResult], method: str, changed: bool = True) -> tuple[list, list, list]:
    """Per image (a0, b0, a1, ...) ground truth, boxes and scores of the pairs with a change
    (`changed=False`: of the no-change pairs)."""
    gt, dets, scores = [], [], []
    for r in results:
        for p, has_change in enumerate(_changed_pairs(r)):
            if has_change == changed:
                gt += r.gt[2 * p:2 * p + 2]
                dets += r.dets[method][2 * p:2 * p + 2]
                scores += r.scores[method][2 * p:2 * p + 2]
    return gt, dets, scores


def false_alarms(results: Sequence[SetResult], method: str) -> dict:
    """{"false_alarms": boxes scored >= FALSE_ALARM_SCORE per no-change pair (None without one),
    "no_change_pairs": their number}."""
    _, _, scores = pool(results, method, changed=False)
    pairs = len(scores) // 2
    count = sum(int((np.asarray(s) >= FALSE_ALARM_SCORE).sum()) for s in scores)
    return {"false_alarms": count / pairs if pairs else None, "no_change_pairs": pairs}


def _entry(parts: Sequence[SetResult], method: str, iou_threshold: float, max_boxes: int) -> tuple[dict, Any]:
    entry, ap = score(*pool(parts, method), iou_threshold, max_boxes)
    entry.update(false_alarms(parts, method))
    return entry, ap


def compute_metrics(results: Sequence[SetResult], methods: Sequence[str], iou_threshold: float,
                    max_boxes: int) -> tuple[dict, dict]:
    """(metrics {method: {testset: {subset: {...}}}}, curves {(method, testset): {"recall", "precision"}}).

    A test set with subsets also gets "all" (its subsets pooled); its curve is the pooled one. AP and
    the curves are over the pairs with a change; `false_alarms` over the no-change pairs.
    """
    by_set: dict[str, list[SetResult]] = {}
    for r in results:
        by_set.setdefault(r.testset, []).append(r)
    metrics: dict = {}
    curves: dict = {}
    for m in methods:
        metrics[m] = {}
        for testset, parts in by_set.items():
            entry: dict = {}
            for r in parts:
                if r.subset != "all":
                    entry[r.subset], _ = _entry([r], m, iou_threshold, max_boxes)
            entry["all"], ap = _entry(parts, m, iou_threshold, max_boxes)
            metrics[m][testset] = entry
            curves[(m, testset)] = ap.pr_curve(CURVE_POINTS)
    return metrics, curves
