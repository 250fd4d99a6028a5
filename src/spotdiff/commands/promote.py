"""`spotdiff promote VERSION`: point a registry alias (default `champion`) at a model version by hand."""

from __future__ import annotations

from pathlib import Path

import typer


def promote(
    version: str = typer.Argument(..., help="model version number to promote"),
    alias: str = typer.Option("champion", help="alias to move (champion, challenger, …)"),
    params: Path = typer.Option(Path("params.yaml"), help="params file; reads `register` and `mlflow`"),
) -> None:
    """Move an alias of `register.model_name` to VERSION (aliases only, never the deprecated stages)."""
    from spotdiff.params import load_params
    from spotdiff.registry.versions import promote_version

    result = promote_version(load_params(params), version, alias)
    before = f" (was version {result['previous']})" if result["previous"] is not None else ""
    typer.echo(f"promote: {result['model_name']}@{result['alias']} -> version {result['version']}{before}")


def register(app: typer.Typer) -> None:
    app.command("promote")(promote)
