"""`spotdiff data`: runs the `data` stage (`spotdiff.stages.data`)."""

from __future__ import annotations

from pathlib import Path

import typer


def data(
    params: Path = typer.Option(Path("params.yaml"), help="params file; this stage reads its `data` section"),
    out: Path = typer.Option(Path("data/source"), help="output folder (images/ + instances.json)"),
) -> None:
    """Build the source dataset: generated offline (`data.source: embedded`) or COCO 2017 (`coco2017`)."""
    from spotdiff.params import load_params
    from spotdiff.stages import data as stage

    summary = stage.run(load_params(params), out)
    sizes = summary["by_size"]
    typer.echo(f"data: {summary['images']} images, {summary['annotations']} objects "
               f"(small {sizes['small']}, medium {sizes['medium']}, large {sizes['large']}) -> {out}")


def register(app: typer.Typer) -> None:
    app.command("data")(data)
