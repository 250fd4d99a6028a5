"""`spotdiff train`: runs the `train` stage (`spotdiff.stages.train`; DDP re-launches it per rank)."""

from __future__ import annotations

from pathlib import Path

import typer


def train(
    params: Path = typer.Option(Path("params.yaml"), help="params file; reads model, train, pairs.augment, mlflow"),
    pairs: Path = typer.Option(Path("data/pairs/manifest.json"), help="the pairs stage's manifest"),
    out: Path = typer.Option(Path("models"), help="output folder: cyws.pt (best train.monitor), train.json, train_run.json"),
    no_tracking: bool = typer.Option(False, "--no-tracking", help="do not log to MLflow"),
) -> None:
    """Train CYWS on the pairs manifest; keep the model with the best `train.monitor`."""
    from spotdiff.params import load_params
    from spotdiff.stages import train as stage
    from spotdiff.training.hardware import check_hardware

    loaded = load_params(params)
    check_hardware(loaded.train, source=str(params))  # (the stage checks again, naming params.yaml)
    summary = stage.run(loaded, pairs, out, tracking=not no_tracking)
    if summary:
        typer.echo(f"train: best val/loss {summary['best_val_loss']:.4f} at epoch {summary['best_epoch']} "
                   f"({summary['train_pairs']} train / {summary['val_pairs']} val pairs, "
                   f"{summary['seconds']:.0f} s, {summary['cpu_seconds']:.0f} CPU-s) -> {out / 'cyws.pt'}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
