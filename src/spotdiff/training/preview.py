"""The picture of the kept model's predictions on a few val pairs (`models/val_predictions.png`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spotdiff.boxes import suppress
from spotdiff.data.pairs_dataset import PairDataset, collate_pairs
from spotdiff.imageio import write_png
from spotdiff.models.checkpoint import load_model
from spotdiff.render import draw_boxes, side_by_side


def draw_val_predictions(model_path: Path, dataset: PairDataset, count: int, out_path: Path) -> None:
    """Ground truth (green) and the top-5 predictions after suppression (red) on `count` val pairs."""
    model = load_model(model_path)
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    if not items:
        return
    batch = collate_pairs(items)
    dets_a, dets_b = model.predict(batch["image_a"], batch["image_b"])
    rows = []
    for i in range(len(items)):
        tiles = []
        for key, (boxes, scores) in (("a", dets_a[i]), ("b", dets_b[i])):
            image = (batch[f"image_{key}"][i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            image = draw_boxes(image, batch[f"boxes_{key}"][i].numpy(), color=(0, 200, 0), show_scores=False,
                               labels=["gt"] * len(batch[f"boxes_{key}"][i]))
            top_boxes, top_scores = suppress(boxes.numpy(), scores.numpy(), top_k=5)
            tiles.append(draw_boxes(image, top_boxes, scores=top_scores, color=(230, 40, 40)))
        rows.append(side_by_side(tiles, captions=[f"{items[i]['pair_id']} A", "B"]))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    grid = side_by_side([np.concatenate(rows, axis=0)],
                        header="validation pairs: ground truth (green), top-5 predictions (red)")
    write_png(out_path, grid, compress_level=6)
