"""`spotdiff train`: the `train` DVC stage (runs as its own process; DDP re-launches it per rank)."""

from __future__ import annotations

from pathlib import Path

import typer


def train(
    params: Path = typer.Option(Path("params.yaml"), help="params file; reads model, train, pairs.augment, mlflow"),
    pairs: Path = typer.Option(Path("data/pairs/manifest.json"), help="the pairs stage's manifest"),
    out: Path = typer.Option(Path("models"), help="output folder: cyws.pt (best val/loss) and train.json"),
    no_tracking: bool = typer.Option(False, "--no-tracking", help="do not log to MLflow"),
) -> None:
    """Train CYWS on the pairs manifest; keep the model with the lowest validation loss."""
    from spotdiff.params import load_params
    from spotdiff.training import train as fit

    cfg = load_params(params)
    summary = fit(cfg, pairs, out, tracking=not no_tracking)
    if summary:
        typer.echo(f"train: best val/loss {summary['best_val_loss']:.4f} at epoch {summary['best_epoch']} "
                   f"({summary['train_pairs']} train / {summary['val_pairs']} val pairs, "
                   f"{summary['seconds']:.0f}s) -> {out / 'cyws.pt'}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
