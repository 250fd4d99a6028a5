"""Benchmark: vectorised VOC AP@0.5 vs per-image Python loops, 5000 pairs × 100 boxes per image.

Two baselines, each timed with ours on the same inputs in one run, each checked to agree to 1e-6
(AP; precision and recall curves too for the second):
  - the authors' per-image evaluation (CYWS `utils/voc_eval.py`, FCOS's copy of chainercv's
    `calc_detection_voc_prec_rec` + `calc_detection_voc_ap`, all-point) re-implemented as a plain
    loop over images, with its +1 pixel convention (x2/y2 inclusive: both box sets get +1 on x2/y2
    before IoU) and chainercv's numpy `bbox_iou` (CYWS calls a torch `boxlist_iou` with one more
    +1 inside, in float32; numpy keeps the AP comparable to ours, and is no slower per image).
    Ours is given the same boxes with x2/y2 + 1 (prepared before timing), which is that convention
    in exclusive boxes;
  - `spotdiff.evaluation.average_precision_loop`, our readable reference (exclusive boxes, no +1).
Each pair is timed in interleaved rounds (ours, loop, ours, loop, ...), median of the rounds, so
load from other jobs on the machine falls on both alike; each call's wall time and CPU time
(`time.process_time`: on a busy machine, wall time also counts the waits for a core).
Scores are float64 so no two detections tie (the authors' sort is not stable; ours is).
Writes benchmarks/results/ap.json. Goal: ours ≥ 10× each loop.

    .venv/bin/python benchmarks/bench_ap.py [--pairs 5000] [--boxes 100] [--seed 0] [--repeats 5]
        [--repeats-readable 3] [--results benchmarks/results/ap.json]
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

# benchmarks/ is on sys.path when run as a script
from _timing import interleaved_medians_wall_cpu, machine, machine_line

from spotdiff.evaluation import average_precision, average_precision_loop
from spotdiff.fsutil import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "ap.json"


def make_inputs(n_images: int, boxes: int, seed: int, size: float = 256.0):
    """Per image: 0-10 GT boxes; `boxes` detections, a third of them jittered copies of GT boxes."""
    rng = np.random.default_rng(seed)
    gts, dets, scores = [], [], []
    for _ in range(n_images):
        g = int(rng.integers(0, 11))
        xy = rng.uniform(0, size - 8, (g, 2))
        gt = np.concatenate([xy, xy + rng.uniform(4, 96, (g, 2))], 1)
        k = boxes // 3 if g else 0
        near = gt[rng.integers(0, g, k)] + rng.normal(0, 3, (k, 4)) if k else np.zeros((0, 4))
        xy = rng.uniform(0, size - 8, (boxes - k, 2))
        far = np.concatenate([xy, xy + rng.uniform(4, 96, (boxes - k, 2))], 1)
        d = np.concatenate([near, far])
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        gts.append(gt)
        dets.append(d)
        scores.append(rng.random(boxes))
    return gts, dets, scores


def _bbox_iou(bbox_a: np.ndarray, bbox_b: np.ndarray) -> np.ndarray:
    """chainercv's `bbox_iou` (pairwise IoU of two box arrays)."""
    tl = np.maximum(bbox_a[:, None, :2], bbox_b[:, :2])
    br = np.minimum(bbox_a[:, None, 2:], bbox_b[:, 2:])
    area_i = np.prod(br - tl, axis=2) * (tl < br).all(axis=2)
    area_a = np.prod(bbox_a[:, 2:] - bbox_a[:, :2], axis=1)
    area_b = np.prod(bbox_b[:, 2:] - bbox_b[:, :2], axis=1)
    return area_i / (area_a[:, None] + area_b - area_i)


def authors_loop(gt_boxes, det_boxes, det_scores, iou_thresh: float = 0.5, max_boxes: int = 100) -> float:
    """The authors' VOC evaluation (chainercv's `calc_detection_voc_prec_rec` + `calc_detection_voc_ap`,
    all-point), per image and per label in a plain loop, with its +1 convention; one class, no
    difficult boxes, the top `max_boxes` detections per image by score (the CYWS detector's own
    post-processing keeps 100; here a no-op unless an image has more)."""
    n_pos, score, match = defaultdict(int), defaultdict(list), defaultdict(list)
    for gt_bbox, pred_bbox, pred_score in zip(gt_boxes, det_boxes, det_scores):
        if len(pred_score) > max_boxes:
            top = pred_score.argsort()[::-1][:max_boxes]
            pred_bbox, pred_score = pred_bbox[top], pred_score[top]
        pred_label = np.zeros(len(pred_bbox), dtype=np.int64)
        gt_label = np.zeros(len(gt_bbox), dtype=np.int64)
        gt_difficult = np.zeros(len(gt_bbox), dtype=bool)
        for lbl in np.unique(np.concatenate((pred_label, gt_label)).astype(int)):
            pred_mask_l = pred_label == lbl
            pred_bbox_l, pred_score_l = pred_bbox[pred_mask_l], pred_score[pred_mask_l]
            order = pred_score_l.argsort()[::-1]
            pred_bbox_l, pred_score_l = pred_bbox_l[order], pred_score_l[order]
            gt_mask_l = gt_label == lbl
            gt_bbox_l, gt_difficult_l = gt_bbox[gt_mask_l], gt_difficult[gt_mask_l]
            n_pos[lbl] += np.logical_not(gt_difficult_l).sum()
            score[lbl].extend(pred_score_l)
            if len(pred_bbox_l) == 0:
                continue
            if len(gt_bbox_l) == 0:
                match[lbl].extend((0,) * pred_bbox_l.shape[0])
                continue
            pred_bbox_l = pred_bbox_l.copy()  # VOC evaluation follows integer typed boxes: +1
            pred_bbox_l[:, 2:] += 1
            gt_bbox_l = gt_bbox_l.copy()
            gt_bbox_l[:, 2:] += 1
            iou = _bbox_iou(pred_bbox_l, gt_bbox_l)
            gt_index = iou.argmax(axis=1)
            gt_index[iou.max(axis=1) < iou_thresh] = -1
            selec = np.zeros(gt_bbox_l.shape[0], dtype=bool)
            for gt_idx in gt_index:
                if gt_idx >= 0:
                    if gt_difficult_l[gt_idx]:
                        match[lbl].append(-1)
                    elif not selec[gt_idx]:
                        match[lbl].append(1)
                    else:
                        match[lbl].append(0)
                    selec[gt_idx] = True
                else:
                    match[lbl].append(0)
    score_l = np.array(score[0])
    match_l = np.array(match[0], dtype=np.int8)[score_l.argsort()[::-1]]
    tp = np.cumsum(match_l == 1)
    fp = np.cumsum(match_l == 0)
    prec = tp / (fp + tp)
    rec = tp / n_pos[0]
    mpre = np.concatenate(([0], np.nan_to_num(prec), [0]))
    mrec = np.concatenate(([0], rec, [1]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the envelope, as chainercv and CYWS compute it
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def plus_one(boxes: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for b in boxes:
        b = b.copy()
        b[:, 2:] += 1
        out.append(b)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5000)
    ap.add_argument("--boxes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds vs the authors' loop")
    ap.add_argument("--repeats-readable", type=int, default=3, help="rounds vs our readable loop (slow)")
    ap.add_argument("--results", default=str(RESULTS), help="JSON file to write")
    args = ap.parse_args()

    n_images = 2 * args.pairs  # both images of every pair, pooled
    gts, dets, scores = make_inputs(n_images, args.boxes, args.seed)
    info = machine()

    # 1. vs the authors' algorithm (+1 convention)
    gts1, dets1 = plus_one(gts), plus_one(dets)
    vec1, ap_auth = average_precision(gts1, dets1, scores), authors_loop(gts, dets, scores)
    diff_auth = abs(vec1.ap - ap_auth)
    t1 = interleaved_medians_wall_cpu({"ours": lambda: average_precision(gts1, dets1, scores),
                                       "loop": lambda: authors_loop(gts, dets, scores)}, args.repeats)
    t_vec1, t_auth = t1["ours"]["wall"], t1["loop"]["wall"]
    # 2. vs our readable per-image loop (exclusive boxes); its first round doubles as the check run
    vec, ref = average_precision(gts, dets, scores), average_precision_loop(gts, dets, scores)
    t2 = interleaved_medians_wall_cpu({"ours": lambda: average_precision(gts, dets, scores),
                                       "loop": lambda: average_precision_loop(gts, dets, scores)},
                                      args.repeats_readable, warmup=0)
    t_vec, t_loop = t2["ours"]["wall"], t2["loop"]["wall"]
    load_after = round(os.getloadavg()[0], 2)

    ap_diff = abs(vec.ap - ref.ap)
    curve_diff = max(float(np.max(np.abs(vec.precision - ref.precision), initial=0.0)),
                     float(np.max(np.abs(vec.recall - ref.recall), initial=0.0)))
    equal = ap_diff <= 1e-6 and curve_diff <= 1e-6 and vec.num_tp == ref.num_tp and diff_auth <= 1e-6
    rows = [
        {"baseline": "authors' per-image loop (chainercv VOC, +1 px)", "seconds_ours_median": t_vec1,
         "seconds_baseline": t_auth, "speedup": t_auth / t_vec1, "ap_ours": vec1.ap, "ap_baseline": ap_auth,
         "max_abs_ap_diff": diff_auth, "cpu_seconds_ours_median": t1["ours"]["cpu"],
         "cpu_seconds_baseline": t1["loop"]["cpu"], "speedup_cpu": t1["loop"]["cpu"] / t1["ours"]["cpu"]},
        {"baseline": "our readable loop (average_precision_loop)", "seconds_ours_median": t_vec,
         "seconds_baseline": t_loop, "speedup": t_loop / t_vec, "ap_ours": vec.ap, "ap_baseline": ref.ap,
         "max_abs_ap_diff": ap_diff, "max_abs_curve_diff": curve_diff,
         "cpu_seconds_ours_median": t2["ours"]["cpu"], "cpu_seconds_baseline": t2["loop"]["cpu"],
         "speedup_cpu": t2["loop"]["cpu"] / t2["ours"]["cpu"]},
    ]
    result = {
        "benchmark": "voc_ap50_vectorised_vs_loop",
        "pairs": args.pairs, "images": n_images, "boxes_per_image": args.boxes,
        "num_gt": vec.num_gt, "num_det": vec.num_det, "rows": rows,
        "equal_to_1e-6": bool(equal),
        "timing": "interleaved rounds, median; wall (perf_counter) and CPU (process_time) per call",
        "repeats_authors": args.repeats, "repeats_readable": args.repeats_readable,
        "speedup": rows[0]["speedup"], "speedup_cpu": rows[0]["speedup_cpu"], "goal_speedup": 10.0,
        "machine": {**info, "load_average_1m_after": load_after, "numpy": np.__version__},
        "command": f"python benchmarks/bench_ap.py --pairs {args.pairs} --boxes {args.boxes}",
    }
    write_json_atomic(Path(args.results), result)
    print(f"VOC AP@0.5 on {args.pairs} pairs ({n_images} images) × {args.boxes} boxes: "
          f"{vec.num_det} detections, {vec.num_gt} GT")
    print(f"{'baseline':<50}{'ours s':>8}{'loop s':>8}{'ratio':>8}{'CPU: ours':>11}{'loop':>8}{'ratio':>8}"
          f"{'|ΔAP|':>10}")
    for r in rows:
        print(f"{r['baseline']:<50}{r['seconds_ours_median']:>8.3f}{r['seconds_baseline']:>8.3f}"
              f"{r['speedup']:>7.1f}×{r['cpu_seconds_ours_median']:>11.3f}{r['cpu_seconds_baseline']:>8.3f}"
              f"{r['speedup_cpu']:>7.1f}×{r['max_abs_ap_diff']:>10.1e}")
    print(f"medians of interleaved rounds: {args.repeats} vs the authors' loop, {args.repeats_readable} vs "
          f"ours. Equal to 1e-6: {equal}. Goal ≥ 10×.")
    print(machine_line(info) + f" (after: {load_after})")
    print(f"wrote {args.results}")
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
