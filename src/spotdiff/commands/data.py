"""`spotdiff data`: the `data` DVC stage (COCO-format instance dataset from the configured source)."""

from __future__ import annotations

from pathlib import Path

import typer


def data(
    params: Path = typer.Option(Path("params.yaml"), help="params file; this stage reads its `data` section"),
    out: Path = typer.Option(Path("data/source"), help="output folder (images/ + instances.json)"),
) -> None:
    """Build the source dataset: generated offline (`data.source: embedded`) or COCO 2017 (`coco2017`)."""
    from spotdiff.data.source import write_dataset
    from spotdiff.params import load_params

    cfg = load_params(params).data
    summary = write_dataset(cfg, out)
    sizes = summary["by_size"]
    typer.echo(f"data: {summary['images']} images, {summary['annotations']} objects "
               f"(small {sizes['small']}, medium {sizes['medium']}, large {sizes['large']}) -> {out}")


def register(app: typer.Typer) -> None:
    app.command("data")(data)
