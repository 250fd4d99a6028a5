"""Benchmark: vectorised VOC AP@0.5 vs the per-image Python loop, 5000 pairs × 100 boxes per image.

Times both on the same inputs in one run, checks they agree to 1e-6 (AP, precision, recall) and
writes benchmarks/results/ap.json. Goal: the vectorised version at least 10× faster.

    .venv/bin/python benchmarks/bench_ap.py [--pairs 5000] [--boxes 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np

from _timing import best_of  # benchmarks/ is on sys.path when run as a script
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
        scores.append(rng.random(boxes).astype(np.float32))
    return gts, dets, scores


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5000)
    ap.add_argument("--boxes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    n_images = 2 * args.pairs  # both images of every pair, pooled
    gts, dets, scores = make_inputs(n_images, args.boxes, args.seed)
    t_vec, vec = best_of(lambda: average_precision(gts, dets, scores), args.repeats)
    t_loop, ref = best_of(lambda: average_precision_loop(gts, dets, scores), 1)

    ap_diff = abs(vec.ap - ref.ap)
    curve_diff = max(float(np.max(np.abs(vec.precision - ref.precision), initial=0.0)),
                     float(np.max(np.abs(vec.recall - ref.recall), initial=0.0)))
    equal = ap_diff <= 1e-6 and curve_diff <= 1e-6 and vec.num_tp == ref.num_tp
    ratio = t_loop / t_vec
    result = {
        "benchmark": "voc_ap50_vectorised_vs_loop",
        "pairs": args.pairs, "images": n_images, "boxes_per_image": args.boxes,
        "num_gt": vec.num_gt, "num_det": vec.num_det,
        "ap_vectorised": vec.ap, "ap_loop": ref.ap, "max_abs_ap_diff": ap_diff,
        "max_abs_curve_diff": curve_diff, "equal_to_1e-6": bool(equal),
        "seconds_vectorised_best_of": t_vec, "repeats_vectorised": args.repeats,
        "seconds_loop": t_loop, "speedup": ratio, "goal_speedup": 10.0,
        "machine": {"python": platform.python_version(),
                    "processor": platform.processor() or platform.machine(),
                    "numpy": np.__version__},
    }
    write_json_atomic(RESULTS, result)
    print(f"VOC AP@0.5 on {args.pairs} pairs ({n_images} images) × {args.boxes} boxes: "
          f"{vec.num_det} detections, {vec.num_gt} GT")
    print(f"  vectorised {t_vec:.3f} s (best of {args.repeats})   loop {t_loop:.3f} s   "
          f"speed-up {ratio:.1f}× (goal ≥10×)")
    print(f"  AP {vec.ap:.6f} vs {ref.ap:.6f}  |ΔAP| {ap_diff:.2e}  max|Δcurve| {curve_diff:.2e}  "
          f"equal(1e-6): {equal}")
    print(f"  wrote {RESULTS}")
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
