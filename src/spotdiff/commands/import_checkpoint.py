"""`spotdiff import-checkpoint FILE`: register a checkpoint made elsewhere (the authors' published CYWS
file, or one of ours) in the MLflow registry, so `models:/spotdiff@champion` can be the authors' model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def import_checkpoint(
    file: Path = typer.Argument(..., metavar="FILE",
                                help="pretrained-resnet50-3x-coam-scSE-affine.ckpt, or a spotdiff cyws.pt"),
    name: Optional[str] = typer.Option(None, "--name", help="registered model name (default "
                                       "register.model_name, i.e. spotdiff)"),
    alias: str = typer.Option("challenger", "--alias", metavar="ALIAS",
                              help="alias to point at the new version: champion, challenger or none"),
    params: Path = typer.Option(Path("params.yaml"), help="params file; reads `register` and `mlflow` "
                                "(built-in defaults when it does not exist)"),
) -> None:
    """Convert FILE to spotdiff's checkpoint format and register it as a new model version."""
    from spotdiff.params import Params, load_params
    from spotdiff.registry.versions import import_checkpoint as run

    cfg = load_params(params) if params.is_file() else Params()
    record = run(cfg, file, name=name, alias=alias)
    paper = ", ".join(f"{k.split('.', 1)[1]} {v}" for k, v in record["tags"].items()
                      if k.startswith("paper_ap50."))
    moved = (f"; {record['alias']} -> version {record['version']}"
             + (f" (was version {record['previous']})" if record["previous"] is not None else "")
             if record["alias"] else "; no alias moved")
    typer.echo(f"import-checkpoint: {file} (md5 {record['tags']['source_md5']}) -> "
               f"{record['model_uri']} in {record['tracking_uri']}{moved}")
    if paper:
        typer.echo(f"  tagged with the paper's AP@0.5: {paper}")


def register(app: typer.Typer) -> None:
    app.command("import-checkpoint")(import_checkpoint)
