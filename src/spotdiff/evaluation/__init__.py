"""Evaluation: the paper's detection metrics, and the `evaluate` stage built on them.

- `metrics`: VOC AP@0.5 (the paper's protocol, vectorised) and COCO AP via pycocotools — re-exported
  here, so `from spotdiff.evaluation import average_precision` works (training's validation uses it);
- `stage.run_evaluation(params, model, train_info, testsets_dir, out, ...)`: the `evaluate` stage —
  both methods on every test set, outputs under `out`, MLflow logging. Its parts: `runner`
  (discovery, batching, the run loop), `scoring` (metrics per set and pooled), `plots` (CSVs and the
  PR-curve figure), `samples` (example pictures), `report` (report.md and timings.json),
  `mlflow_log` (logging into the training run).
"""

from spotdiff.evaluation.metrics import (
    SIZE_RANGES,
    APResult,
    average_precision,
    average_precision_loop,
    coco_ap,
    evaluate_detections,
    size_breakdown,
    voc_ap_from_curve,
)

__all__ = ["SIZE_RANGES", "APResult", "average_precision", "average_precision_loop", "coco_ap",
           "evaluate_detections", "size_breakdown", "voc_ap_from_curve"]
