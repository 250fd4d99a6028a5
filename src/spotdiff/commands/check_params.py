"""`spotdiff check-params`: runs the `check_params` stage (`spotdiff.stages.check_params`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def check_params(
    params: Path = typer.Option(Path("params.yaml"), help="params file to validate (every section)"),
    out: Optional[Path] = typer.Option(None, help="write this marker file when valid (the DVC stage's out)"),
) -> None:
    """Validate every section of the params file; a bad value is one line and exit 2, nothing touched."""
    from spotdiff.stages import check_params as stage

    summary = stage.run(params, out)
    typer.echo(f"check-params: {params} valid ({len(summary['sections'])} sections)"
               + (f" -> {out}" if out else ""))


def register(app: typer.Typer) -> None:
    app.command("check-params")(check_params)
