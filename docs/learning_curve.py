"""Draw training runs' learning curves from their MLflow metric history (the README's picture).

    .venv/bin/python docs/learning_curve.py --run sqlite:///mlruns/mlflow.db RUN_ID "embedded, 1 200 steps" \
        --run sqlite:///../cpuhour/mlruns/mlflow.db RUN_ID "cpu-hour, 8 000 steps" --out docs/learning_curve.png

(the second store: a clone where `profiles/cpu-hour.yaml` ran, here beside this one; a relative
sqlite URI is resolved from the working folder).

Panels: the training heatmap loss (`train/heatmap`, smoothed over 10 logged points), the
validation loss (`val/loss`) and the validation VOC AP@0.5 (`val/ap50`) against the optimiser step;
a dashed line per run marks its test-set CYWS AP@0.5 on the COCO-Inpainted stand-in when the
evaluate stage logged it to the same run (`--test-ap` gives it by hand otherwise).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np


def history(client, run_id: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    return np.array([m.step for m in points], float), np.array([m.value for m in points], float)


def main() -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", nargs=3, action="append", required=True, metavar=("TRACKING_URI", "RUN_ID", "LABEL"))
    ap.add_argument("--test-ap", type=float, action="append", default=[],
                    help="per --run, in order: its COCO-Inpainted stand-in CYWS AP@0.5")
    ap.add_argument("--out", default="docs/learning_curve.png")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlflow.tracking import MlflowClient

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, (uri, run_id, label) in enumerate(args.run):
        client = MlflowClient(tracking_uri=uri)
        colour = f"C{i}"
        step, heat = history(client, run_id, "train/heatmap")
        if len(heat) >= 10:
            heat = np.convolve(heat, np.ones(10) / 10, mode="valid")
            step = step[9:]
        axes[0].plot(step, heat, color=colour, label=label)
        step, loss = history(client, run_id, "val/loss")
        axes[1].plot(step, loss, "o-", color=colour, label=label)
        step, ap50 = history(client, run_id, "val/ap50")
        axes[2].plot(step, ap50, "o-", color=colour, label=f"val, {label}")
        test = client.get_run(run_id).data.metrics.get("cyws/coco_inpainted/all/ap50")
        if i < len(args.test_ap):
            test = args.test_ap[i]
        if test is not None:
            axes[2].axhline(test, color=colour, ls="--", lw=1, label=f"test COCO-Inpainted {test:.3f}")
    for ax, title in zip(axes, ("train heatmap loss (per object, smoothed)", "val loss", "val VOC AP@0.5")):
        ax.set_title(title)
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if ax is axes[2] else "upper right")
    fig.tight_layout()
    out = Path(args.out)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".png", delete=False) as tmp:
        fig.savefig(tmp.name, dpi=90)
    os.replace(tmp.name, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
