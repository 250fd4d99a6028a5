"""Benchmark: CYWS inference one pair at a time vs batched (`CywsDetector.detect_batch`).

The evaluate stage runs the learned method in batches; this measures what that buys, side by side
in one run, on whatever device is there (CPU here; CUDA when available). Writes
benchmarks/results/cyws_inference.json.

    .venv/bin/python benchmarks/bench_cyws_inference.py [--pairs 32] [--batch 8]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from spotdiff.fsutil import write_json_atomic
from spotdiff.methods.learned import CywsDetector
from spotdiff.models.cyws import CYWS

RESULTS = Path(__file__).resolve().parent / "results" / "cyws_inference.json"
CONFIGS = [("resnet18", 96), ("resnet50", 256)]


def bench(backbone: str, size: int, pairs: int, batch: int, device: str) -> dict:
    torch.manual_seed(0)
    detector = CywsDetector(CYWS(backbone=backbone, image_size=size), device=device)
    rng = np.random.default_rng(0)
    images_a = [rng.integers(0, 255, (256, 320, 3), dtype=np.uint8) for _ in range(pairs)]
    images_b = [img.copy() for img in images_a]
    detector.detect_batch(images_a[:2], images_b[:2])  # warm-up
    started = time.perf_counter()
    single = [detector.detect(a, b) for a, b in zip(images_a, images_b)]
    t_single = time.perf_counter() - started
    started = time.perf_counter()
    batched = []
    for i in range(0, pairs, batch):
        batched += detector.detect_batch(images_a[i:i + batch], images_b[i:i + batch])
    t_batched = time.perf_counter() - started
    # Same detections: equal score lists, and the boxes found in the other list. An untrained net has
    # near-tied scores, so a box at the top-100 cut can differ between batch shapes: report the share.
    scores_equal = all(np.allclose(s[1], b[1], atol=1e-4) for s, b in zip(single, batched))
    found = np.concatenate([np.abs(s[0][:, None, :] - b[0][None, :, :]).max(axis=2).min(axis=1) < 1e-2
                            for s, b in zip(single, batched)])
    same = scores_equal and found.mean() >= 0.98
    return {"backbone": backbone, "image_size": size, "pairs": pairs, "batch": batch, "device": device,
            "s_per_pair_single": t_single / pairs, "s_per_pair_batched": t_batched / pairs,
            "speedup": t_single / t_batched, "same_boxes": bool(same), "scores_equal": bool(scores_equal),
            "boxes_matched_fraction": float(found.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = [bench(bb, size, args.pairs, args.batch, device) for bb, size in CONFIGS]
    print(f"{'model':<16}{'single s/pair':>15}{'batched s/pair':>16}{'speed-up':>10}{'same boxes':>12}")
    for r in rows:
        print(f"{r['backbone'] + '@' + str(r['image_size']):<16}{r['s_per_pair_single']:>15.3f}"
              f"{r['s_per_pair_batched']:>16.3f}{r['speedup']:>9.2f}x{str(r['same_boxes']):>12}")
    write_json_atomic(RESULTS, {"benchmark": "cyws_inference_single_vs_batched", "rows": rows,
                                "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                            "threads": torch.get_num_threads()}})
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
