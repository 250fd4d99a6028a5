"""`spotdiff inpaint`: runs the `inpaint` stage (`spotdiff.stages.inpaint`)."""

from __future__ import annotations

from pathlib import Path

import typer


def inpaint(
    params: Path = typer.Option(Path("params.yaml"),
                                help="params file; this stage reads its `inpaint` section"),
    source: Path = typer.Option(Path("data/source"),
                                help="COCO instances dataset (instances.json + images/)"),
    out: Path = typer.Option(Path("data/inpainted"), help="output folder (COCO-Inpainted layout)"),
) -> None:
    """Make 1..max_versions inpainted versions of every image, each removing a different set of objects.

    Rerunning after an interruption redoes only what is missing; `list_of_indices.npy` appears
    only when the run has finished.
    """
    from spotdiff.params import load_params
    from spotdiff.stages import inpaint as stage

    params_ = load_params(params)
    cfg = params_.inpaint
    summary = stage.run(params_, source, out)
    rate = summary.versions_done_now / summary.seconds if summary.seconds > 0 else 0.0
    typer.echo(f"inpaint ({cfg.backend}): {summary.images} images, {summary.versions} inpainted versions "
               f"-> {out} (this run: {summary.images_done_now} images / {summary.versions_done_now} versions "
               f"in {summary.seconds:.1f} s, {rate:.1f} versions/s; {summary.skipped_images} already done)")


def register(app: typer.Typer) -> None:
    app.command("inpaint")(inpaint)
