"""`spotdiff dvc-unlock`: repair DVC's stage lock file left corrupted by a killed `dvc repro`."""

from __future__ import annotations

from pathlib import Path

import typer


def dvc_unlock(repo: Path = typer.Option(Path("."), help="the DVC repository")) -> None:
    """Reset `.dvc/tmp/rwlock` when a killed `dvc` left it corrupted (only while no dvc process runs)."""
    from spotdiff.dvclocks import repair_rwlock

    done = repair_rwlock(repo)
    typer.echo(f"dvc-unlock: {done}" if done else "dvc-unlock: nothing to repair")


def register(app: typer.Typer) -> None:
    app.command("dvc-unlock")(dvc_unlock)
