"""The `data` stage (`spotdiff data`): the source dataset of images and instance annotations, in COCO
format.

Reads: `params.data` (`source: embedded` generates images offline; `coco2017` downloads COCO 2017
and keeps `data.coco.max_images` images).
Writes: `<out>/instances.json` (COCO instances, RLE masks) and `<out>/images/`, swapped in whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from spotdiff.params import Params


def run(params: Params, out: str | Path) -> dict:
    """Write the source dataset; returns {"images", "annotations", "by_size": {small, medium, large}}."""
    from spotdiff.data.source import write_dataset

    return write_dataset(params.data, Path(out))


def data(
    params: Path = typer.Option(Path("params.yaml"), help="params file; this stage reads its `data` section"),
    out: Path = typer.Option(Path("data/source"), help="output folder (images/ + instances.json)"),
) -> None:
    """Build the source dataset: generated offline (`data.source: embedded`) or COCO 2017 (`coco2017`)."""
    from spotdiff.params import load_params

    summary = run(load_params(params), out)
    sizes = summary["by_size"]
    typer.echo(f"data: {summary['images']} images, {summary['annotations']} objects "
               f"(small {sizes['small']}, medium {sizes['medium']}, large {sizes['large']}) -> {out}")


def register(app: typer.Typer) -> None:
    app.command("data")(data)
