"""Scores of the evaluate stage: each test set (and subset) by the paper's protocol, subsets pooled.

VOC AP at `evaluate.iou_threshold` with both images of every pair pooled, no NMS and no score
threshold (`spotdiff.evaluation.metrics.average_precision`), and COCO AP@[.5:.95] (pycocotools) as a
second column. A test set with subsets (COCO-Inpainted small / medium / large) also gets "all", its
subsets pooled (the paper's headline number).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from spotdiff.evaluation.metrics import average_precision, coco_ap
from spotdiff.evaluation.runner import SetResult

CURVE_POINTS = 101


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


def pool(results: Sequence[SetResult], method: str) -> tuple[list, list, list]:
    gt, dets, scores = [], [], []
    for r in results:
        gt += r.gt
        dets += r.dets[method]
        scores += r.scores[method]
    return gt, dets, scores


def compute_metrics(results: Sequence[SetResult], methods: Sequence[str], iou_threshold: float,
                    max_boxes: int) -> tuple[dict, dict]:
    """(metrics {method: {testset: {subset: {...}}}}, curves {(method, testset): {"recall", "precision"}}).

    A test set with subsets also gets "all" (its subsets pooled); its curve is the pooled one.
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
                    entry[r.subset], _ = score(r.gt, r.dets[m], r.scores[m], iou_threshold, max_boxes)
            entry["all"], ap = score(*pool(parts, m), iou_threshold, max_boxes)
            metrics[m][testset] = entry
            curves[(m, testset)] = ap.pr_curve(CURVE_POINTS)
    return metrics, curves
