"""Example pictures of the evaluate stage: `samples/<testset>.png`, a few pairs per test set, each row
[A, B with the ground truth (green) | A, B with each method's displayed boxes]."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from spotdiff.evaluation.runner import TITLES, SetResult
from spotdiff.imageio import write_png
from spotdiff.render import draw_boxes, side_by_side

GT_COLOUR = (0, 200, 0)
PNG_COMPRESSION = 6


def draw_samples(samples: Sequence[dict], methods: Sequence[str], header: str,
                 titles: dict[str, str] | None = None) -> np.ndarray | None:
    """Rows of [A, B with ground truth | A, B per method], stacked; None when there are no samples.
    Each sample's `methods[m]` is the PairDetections method m displays; `titles`: name → label."""
    titles = titles or {}
    rows = []
    for s in samples:
        tiles = [draw_boxes(s["image_a"], s["gt_a"], color=GT_COLOUR, show_scores=False),
                 draw_boxes(s["image_b"], s["gt_b"], color=GT_COLOUR, show_scores=False)]
        captions = ["A: ground truth", "B: ground truth"]
        for m in methods:
            shown = s["methods"][m]
            tiles += [draw_boxes(s["image_a"], shown.boxes_a, shown.labels_a, shown.scores_a),
                      draw_boxes(s["image_b"], shown.boxes_b, shown.labels_b, shown.scores_b)]
            title = titles.get(m, m)
            captions += [f"A: {title}", f"B: {title}"]
        line = f"{s['set']}: pair {s['pair_id']}"
        line = f"{header}  |  {line}" if not rows else line  # ASCII: the default font lacks dashes
        rows.append(side_by_side(tiles, header=line, captions=captions, max_height=256))
    if not rows:
        return None
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=32) for r in rows]
    return np.concatenate(padded, axis=0)


def write_samples(folder: Path, results: Sequence[SetResult], methods: Sequence[str], count: int,
                  titles: dict[str, str] | None = None) -> list[Path]:
    """`<testset>.png` per test set in `folder`: up to `count` pairs, a set's subsets interleaved."""
    standin = {r.testset: r.is_standin for r in results}
    written = []
    for testset in dict.fromkeys(r.testset for r in results):
        picked: list[dict] = []
        parts = [r.samples for r in results if r.testset == testset]
        for i in range(max((len(p) for p in parts), default=0)):  # interleave the subsets
            picked += [p[i] for p in parts if i < len(p)]
        title = TITLES.get(testset, testset) + (" (STAND-IN)" if standin[testset] else "")
        canvas = draw_samples(picked[:count], methods, title, titles)
        if canvas is not None:
            written.append(write_png(folder / f"{testset}.png", canvas, compress_level=PNG_COMPRESSION))
    return written
