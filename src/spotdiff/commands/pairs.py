"""`spotdiff pairs`: the `pairs` DVC stage (COCO-Inpainted folder -> manifest.json + preview.png)."""

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

    from spotdiff.data.pairs import run_pairs
    from spotdiff.params import load_params

    import torch

    # Per-pair augmentation works on small tensors: intra-op threads only contend (10x slower on a busy
    # 2-core machine). Set here, in the command, not in the library the training loop also uses.
    cfg = load_params(params)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        counts = run_pairs(cfg.pairs, inpainted, out, cfg.model.image_size)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    total = counts["train"] + counts["val"]
    typer.echo(f"pairs: {counts['train']} train + {counts['val']} val pairs "
               f"({counts['skipped']} not drawable) -> {out}/manifest.json, preview {out}/preview.png "
               f"({seconds:.1f} s, {total / seconds:.0f} pairs/s)")


def register(app: typer.Typer) -> None:
    app.command("pairs")(pairs)
