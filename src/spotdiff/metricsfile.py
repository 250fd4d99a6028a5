"""The evaluation metrics file (`eval/metrics.json`) as flat `a/b/c` keys, the way MLflow, the
register stage and CI's floor check all read it."""

from __future__ import annotations

from typing import Any


def flatten_metrics(obj: Any, prefix: str = "") -> dict[str, float]:
    """{"cyws": {"coco_inpainted": {"all": {"ap50": 0.4}}}} -> {"cyws/coco_inpainted/all/ap50": 0.4}.

    Only numeric leaves are kept (booleans and strings are not metrics).
    """
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(flatten_metrics(value, f"{prefix}/{key}" if prefix else str(key)))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and prefix:
        value = float(obj)
        if value == value and value not in (float("inf"), float("-inf")):  # no NaN/inf
            out[prefix] = value
    return out
