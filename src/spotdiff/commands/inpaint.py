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
    only when the run has finished. `inpaint.devices` > 1 runs that many processes (torchrun), each
    on its share of the images: the same files (docs/SCALE-OUT.md).
    """
    from spotdiff import distributed
    from spotdiff.params import load_params
    from spotdiff.stages import inpaint as stage

    params_ = load_params(params)
    cfg = params_.inpaint
    if distributed.wants_launch(cfg.devices, cfg.num_nodes):
        stage.check_inputs(params_, source)  # a user's mistake is one line here, not one per process
        distributed.launch("inpaint", ["inpaint", "--params", str(params), "--source", str(source),
                                       "--out", str(out)], cfg.devices, cfg.num_nodes)
        typer.echo(f"inpaint ({cfg.backend}): {cfg.devices * cfg.num_nodes} processes -> {out}")
        return
    summary = stage.run(params_, source, out)
    rate = summary.versions_done_now / summary.seconds if summary.seconds > 0 else 0.0
    if summary.processes > 1 and not distributed.shard_from_env().is_main:
        return  # rank 0 prints the launch's counts
    typer.echo(f"inpaint ({cfg.backend}): {summary.images} images, {summary.versions} inpainted versions "
               f"-> {out} (this run: {summary.images_done_now} images / {summary.versions_done_now} versions "
               f"in {summary.seconds:.1f} s, {rate:.1f} versions/s; {summary.skipped_images} already done)")


def register(app: typer.Typer) -> None:
    app.command("inpaint")(inpaint)
