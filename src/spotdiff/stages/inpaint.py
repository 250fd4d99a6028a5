"""The `inpaint` stage: versions of every source image with sets of its objects inpainted away.

Reads: `params.inpaint` (backend `opencv` offline, or `lama` with real LaMa weights), the source
dataset (`instances.json` + `images/`).
Writes: a COCO-Inpainted folder (the layout the authors' test set uses): each image, its inpainted
versions, `list_of_indices.npy` last. Resumable: a killed run redoes only what is missing.
Inside a `torch.distributed` launch (`inpaint.devices` > 1, or torchrun) each process inpaints its
share and rank 0 finishes the folder: the same files as one process (docs/SCALE-OUT.md).
"""

from __future__ import annotations

from pathlib import Path

from spotdiff.data.inpaint import InpaintSummary, check_lama_checkpoint, read_source, run_inpaint
from spotdiff.params import Params


def run(params: Params, source: str | Path, out: str | Path) -> InpaintSummary:
    """Inpaint what is missing in `out`; returns the counts of this run and of the whole folder."""
    return run_inpaint(params.inpaint, Path(source), Path(out))


def check_inputs(params: Params, source: str | Path) -> None:
    """What `run` would refuse at its start (a missing or broken source, a missing LaMa file),
    checked once before a launch starts its processes."""
    read_source(Path(source))
    if params.inpaint.backend == "lama":
        check_lama_checkpoint(params.inpaint.lama_checkpoint)
