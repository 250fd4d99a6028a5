"""The `check_params` stage (`spotdiff check-params`): every section of params.yaml validated before
any other stage runs.

DVC removes a stage's outputs before it runs the stage's command, so a bad value met by the stage
itself (say `evaluate.iou_threshold: 1.5`) would cost the last good report, metrics and pictures.
Every other stage depends on this stage's output, so `dvc repro` and `dvc exp run` run it first and
stop at a bad param with the previous outputs still in place.

Reads: the whole params file (every section, with the pydantic model of `spotdiff.params`).
Writes: `<out>` (default `params.ok`), always the same bytes, so a valid change of params reruns only
the stages whose own params changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

OK_TEXT = "params valid (spotdiff check-params); every stage depends on this file\n"


def run(params_path: str | Path, out: str | Path | None = None) -> dict:
    """Validate `params_path` (a SpotdiffError naming the bad key otherwise); write `out` when given."""
    from spotdiff.fsutil import write_text_atomic
    from spotdiff.params import load_params

    params = load_params(params_path)
    if out is not None:
        write_text_atomic(Path(out), OK_TEXT)
    return {"sections": list(type(params).model_fields)}


def check_params(
    params: Path = typer.Option(Path("params.yaml"), help="params file to validate (every section)"),
    out: Optional[Path] = typer.Option(None, help="write this marker file when valid (the DVC stage's out)"),
) -> None:
    """Validate every section of the params file; a bad value is one line and exit 2, nothing touched."""
    summary = run(params, out)
    typer.echo(f"check-params: {params} valid ({len(summary['sections'])} sections)"
               + (f" -> {out}" if out else ""))


def register(app: typer.Typer) -> None:
    app.command("check-params")(check_params)
