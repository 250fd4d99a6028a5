"""The `pairs` stage: the manifest of training and validation pairs, and a picture of a few of them.

Reads: `params.pairs` (and `model.image_size` for the preview), the COCO-Inpainted folder.
Writes: `<out>/manifest.json` (pairs drawn per source item, split by source image) and
`<out>/preview.png` (augmented train pairs with their boxes, as the trainer will see them).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from spotdiff.data.pairs import MANIFEST, PREVIEW, build_manifest
from spotdiff.data.pairs_dataset import PairDataset
from spotdiff.errors import SpotdiffError
from spotdiff.fsutil import atomic_paths
from spotdiff.imageio import write_png, write_png_to
from spotdiff.params import AugmentParams, Params


def _outline(image: np.ndarray, boxes: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """1-px box outlines (the preview is drawn at the model's input size, where labels would hide it)."""
    out = np.ascontiguousarray(image.copy())
    for x1, y1, x2, y2 in np.asarray(boxes).reshape(-1, 4):
        top_left = (int(round(x1)), int(round(y1)))
        bottom_right = (int(round(x2)) - 1, int(round(y2)) - 1)  # cv2 corners are inclusive
        cv2.rectangle(out, top_left, bottom_right, color, 1)
    return out


def render_preview(manifest_path: str | Path, out_path: str | Path, count: int, image_size: int,
                   augment: AugmentParams, seed: int = 0, write=write_png) -> int:
    """A grid of `count` augmented train pairs (a | b per row) with their boxes; returns rows drawn."""
    dataset = PairDataset(manifest_path, "train", image_size, augment, seed=seed, deterministic=True)
    rows = []
    rng = np.random.default_rng([seed, 2])
    picks = rng.permutation(len(dataset))[:count] if count else []
    for i in picks:
        item = dataset[int(i)]
        a = (item["image_a"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        b = (item["image_b"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        sep = np.full((image_size, 4, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([_outline(a, item["boxes_a"].numpy(), (255, 0, 0)), sep,
                                    _outline(b, item["boxes_b"].numpy(), (255, 0, 0))], axis=1))
    if not rows:
        grid = np.full((image_size, 2 * image_size + 4, 3), 255, dtype=np.uint8)
    else:
        gap = np.full((4, rows[0].shape[1], 3), 255, dtype=np.uint8)
        grid = np.concatenate(list(itertools.chain.from_iterable((r, gap) for r in rows))[:-1], axis=0)
    write(out_path, grid)
    return len(rows)


def run(params: Params, inpainted: str | Path, out: str | Path) -> dict:
    """Write `manifest.json` and `preview.png` into `out`, both or neither (a write failure or a kill
    leaves no manifest without its preview, nor an empty `out`); returns the pair counts."""
    out = Path(out)
    # Per-pair augmentation works on small tensors: intra-op threads only contend (10x slower on a
    # busy 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        manifest = build_manifest(params.pairs, inpainted, out)
        try:
            with atomic_paths({"manifest": out / MANIFEST, "preview": out / PREVIEW}) as tmp:
                tmp["manifest"].write_text(json.dumps(manifest) + "\n")
                render_preview(tmp["manifest"], tmp["preview"], params.pairs.preview_count,
                               params.model.image_size, params.pairs.augment, seed=params.pairs.seed,
                               write=write_png_to)
        except OSError as exc:  # disk full, file-size limit, read-only file system: nothing was kept
            raise SpotdiffError(f"{out}: cannot write {MANIFEST} and {PREVIEW} ({exc.strerror or exc}); "
                                "nothing was written; free space or choose another --out") from None
    finally:
        torch.set_num_threads(threads)
    return manifest["counts"]
