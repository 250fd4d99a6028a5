"""The `inpaint` stage (`spotdiff inpaint`): versions of every source image with sets of its objects
inpainted away.

Reads: `params.inpaint` (backend `opencv` offline, or `lama` with real LaMa weights), the source
dataset (`instances.json` + `images/`).
Writes: a COCO-Inpainted folder (the layout the authors' test set uses): each image, its inpainted
versions, `list_of_indices.npy` last. Resumable: a killed run redoes only what is missing.
`inpaint.devices` > 1 launches the command once per process (torchrun); each process inpaints its
share and rank 0 finishes the folder: the same files as one process (docs/SCALE-OUT.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from spotdiff.data.inpaint import InpaintSummary
    from spotdiff.params import Params


def run(params: Params, source: str | Path, out: str | Path) -> InpaintSummary:
    """Inpaint what is missing in `out`; returns the counts of this run and of the whole folder."""
    from spotdiff.data.inpaint import run_inpaint

    return run_inpaint(params.inpaint, Path(source), Path(out))


def check_inputs(params: Params, source: str | Path) -> None:
    """What `run` would refuse at its start (a missing or broken source, a missing LaMa file),
    checked once before a launch starts its processes."""
    from spotdiff.data.inpaint import check_lama_checkpoint, read_source

    read_source(Path(source))
    if params.inpaint.backend == "lama":
        check_lama_checkpoint(params.inpaint.lama_checkpoint)


def inpaint(
    params: Path = typer.Option(Path("params.yaml"),
                                help="params file; this stage reads its `inpaint` section"),
    source: Path = typer.Option(Path("data/source"),
                                help="COCO instances dataset (instances.json + images/)"),
    out: Path = typer.Option(Path("data/inpainted"), help="output folder (COCO-Inpainted layout)"),
) -> None:
    """Make 1..max_versions inpainted versions of every image, each removing a different set of objects.

    Rerunning after an interruption redoes only what is missing; `list_of_indices.npy` appears
    only when the run has finished. `inpaint.devices` > 1 runs that many processes (torchrun), each
    on its share of the images: the same files (docs/SCALE-OUT.md).
    """
    from spotdiff import distributed
    from spotdiff.params import load_params

    params_ = load_params(params)
    cfg = params_.inpaint
    if distributed.wants_launch(cfg.devices, cfg.num_nodes):
        check_inputs(params_, source)  # a user's mistake is one line here, not one per process
        distributed.launch("inpaint", ["inpaint", "--params", str(params), "--source", str(source),
                                       "--out", str(out)], cfg.devices, cfg.num_nodes)
        typer.echo(f"inpaint ({cfg.backend}): {cfg.devices * cfg.num_nodes} processes -> {out}")
        return
    summary = run(params_, source, out)
    rate = summary.versions_done_now / summary.seconds if summary.seconds > 0 else 0.0
    if summary.processes > 1 and not distributed.shard_from_env().is_main:
        return  # rank 0 prints the launch's counts
    typer.echo(f"inpaint ({cfg.backend}): {summary.images} images, {summary.versions} inpainted versions "
               f"-> {out} (this run: {summary.images_done_now} images / {summary.versions_done_now} versions "
               f"in {summary.seconds:.1f} s, {rate:.1f} versions/s; {summary.skipped_images} already done)")


def register(app: typer.Typer) -> None:
    app.command("inpaint")(inpaint)
