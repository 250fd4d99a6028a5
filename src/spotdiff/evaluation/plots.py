"""Precision-recall outputs of the evaluate stage: `plots/pr_<method>_<testset>.csv` (the interpolated
precision at 101 recall levels, pooled "all") and `pr_curves.png` (one panel per test set, one line
per method). Both have the same bytes for the same curves: the figure is rendered to pixels and
written by `spotdiff.imageio.write_png` (no matplotlib version or date in the file)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from spotdiff.evaluation.runner import TITLES
from spotdiff.imageio import write_png

PNG_COMPRESSION = 6  # committed to git (DVC `cache: false`): small over fast


def write_curve_csvs(folder: Path, curves: dict) -> list[Path]:
    paths = []
    for (method, testset), curve in curves.items():
        path = folder / f"pr_{method}_{testset}.csv"
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["recall", "precision"])
            for r, p in zip(curve["recall"], curve["precision"]):
                w.writerow([f"{r:.6g}", f"{p:.6g}"])
        paths.append(path)
    return paths


def plot_curves(path: Path, curves: dict, metrics: dict, standin: dict[str, bool],
                titles: dict[str, str] | None = None) -> None:
    """One panel per test set, one line per method (interpolated precision vs recall); `titles`:
    method name → its label (default: the name)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    titles = titles or {}
    testsets = list(dict.fromkeys(t for _, t in curves))
    fig = Figure(figsize=(4.2 * len(testsets), 4.2), dpi=100)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(testsets), squeeze=False)
    for ax, testset in zip(axes[0], testsets):
        for (method, t), curve in curves.items():
            if t != testset:
                continue
            ap = metrics[method][testset]["all"]["ap50"]
            label = f"{titles.get(method, method)} (AP {ap:.3f})" if ap is not None else method
            ax.plot(curve["recall"], curve["precision"], label=label, drawstyle="steps-post")
        title = TITLES.get(testset, testset) + (" (stand-in)" if standin.get(testset) else "")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    canvas.draw()
    rgb = np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])
    write_png(path, rgb, compress_level=PNG_COMPRESSION)
