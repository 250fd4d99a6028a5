"""`spotdiff pairs`: runs the `pairs` stage (`spotdiff.stages.pairs`)."""

from __future__ import annotations

from pathlib import Path

import typer


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
    from spotdiff.stages import pairs as stage

    start = time.perf_counter()
    counts = stage.run(load_params(params), inpainted, out)
    seconds = time.perf_counter() - start
    total = counts["train"] + counts["val"]
    typer.echo(f"pairs: {counts['train']} train + {counts['val']} val pairs "
               f"({counts['skipped']} not drawable) -> {out}/manifest.json, preview {out}/preview.png "
               f"({seconds:.1f} s, {total / seconds:.0f} pairs/s)")


def register(app: typer.Typer) -> None:
    app.command("pairs")(pairs)
