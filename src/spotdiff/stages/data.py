"""The `data` stage: the source dataset of images and instance annotations, in COCO format.

Reads: `params.data` (`source: embedded` generates images offline; `coco2017` downloads COCO 2017
and keeps `data.coco.max_images` images).
Writes: `<out>/instances.json` (COCO instances, RLE masks) and `<out>/images/`, swapped in whole.
"""

from __future__ import annotations

from pathlib import Path

from spotdiff.data.source import write_dataset
from spotdiff.params import Params


def run(params: Params, out: str | Path) -> dict:
    """Write the source dataset; returns {"images", "annotations", "by_size": {small, medium, large}}."""
    return write_dataset(params.data, Path(out))
