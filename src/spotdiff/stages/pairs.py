"""The `pairs` stage (`spotdiff pairs`): the manifest of training and validation pairs, and a picture
of a few of them.

Reads: `params.pairs` (and `model.image_size` for the preview), the COCO-Inpainted folder.
Writes: `<out>/manifest.json` (pairs drawn per source item, split by source image) and
`<out>/preview.png` (augmented train pairs with their boxes, as the trainer will see them).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from spotdiff.params import AugmentParams, Params


def render_preview(manifest_path: str | Path, out_path: str | Path, count: int, image_size: int,
                   augment: AugmentParams, seed: int = 0, write=None) -> int:
    """A grid of `count` augmented train pairs (a | b per row) with their boxes; returns rows drawn."""
    import numpy as np

    from spotdiff.data.pairs_dataset import PairDataset
    from spotdiff.imageio import write_png
    from spotdiff.render import outline_boxes, pair_grid

    dataset = PairDataset(manifest_path, "train", image_size, augment, seed=seed, deterministic=True)
    rng = np.random.default_rng([seed, 2])
    picks = rng.permutation(len(dataset))[:count] if count else []
    rows = []
    for i in picks:
        item = dataset[int(i)]
        a, b = ((item[k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for k in ("image_a", "image_b"))
        rows.append((outline_boxes(a, item["boxes_a"].numpy()), outline_boxes(b, item["boxes_b"].numpy())))
    (write or write_png)(out_path, pair_grid(rows, image_size))
    return len(rows)


def run(params: Params, inpainted: str | Path, out: str | Path) -> dict:
    """Write `manifest.json` and `preview.png` into `out`, both or neither (a write failure or a kill
    leaves no manifest without its preview, nor an empty `out`); returns the pair counts."""
    import json

    import torch

    from spotdiff.data.pairs import MANIFEST, PREVIEW, build_manifest
    from spotdiff.errors import SpotdiffError
    from spotdiff.fsutil import atomic_paths
    from spotdiff.imageio import write_png_to

    out = Path(out)
    # Per-pair augmentation works on small tensors: intra-op threads only contend.
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


def pairs(
    params: Path = typer.Option(Path("params.yaml"), help="params file; this stage reads `pairs` (and "
                                "`model.image_size` for the preview)"),
    inpainted: Path = typer.Option(Path("data/inpainted"),
                                   help="COCO-Inpainted folder (the inpaint stage's output)"),
    out: Path = typer.Option(Path("data/pairs"), help="output folder (manifest.json + preview.png)"),
) -> None:
    """Draw the train/val pairs (split by source image) and draw a preview of augmented pairs with boxes."""
    import time

    from spotdiff.params import load_params

    start = time.perf_counter()
    counts = run(load_params(params), inpainted, out)
    seconds = time.perf_counter() - start
    total = counts["train"] + counts["val"]
    typer.echo(f"pairs: {counts['train']} train + {counts['val']} val pairs "
               f"({counts['skipped']} not drawable) -> {out}/manifest.json, preview {out}/preview.png "
               f"({seconds:.1f} s, {total / seconds:.0f} pairs/s)")


def register(app: typer.Typer) -> None:
    app.command("pairs")(pairs)
