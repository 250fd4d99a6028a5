"""`spotdiff results`: say where the pipeline's results are and show the headline figures."""

from __future__ import annotations

import json
from pathlib import Path

import typer

RESULT_PATHS = [
    ("source dataset", "data/source/instances.json"),
    ("inpainted set", "data/inpainted"),
    ("training pairs (look at preview.png)", "data/pairs/preview.png"),
    ("trained model", "models/cyws.pt"),
    ("training summary", "models/train.json"),
    ("training run (MLflow run, times)", "models/train_run.json"),
    ("val predictions (picture)", "models/val_predictions.png"),
    ("test sets (stand-ins)", "data/testsets"),
    ("evaluation report", "eval/report.md"),
    ("evaluation metrics", "eval/metrics.json"),
    ("PR curves (picture)", "eval/pr_curves.png"),
    ("example detections (pictures)", "eval/samples"),
    ("registry decision", "registry/registration.json"),
]


def results() -> None:
    """List the pipeline's outputs that exist, and print the evaluation report when there is one."""
    typer.echo("spotdiff results:")
    for label, rel in RESULT_PATHS:
        path = Path(rel)
        if path.exists():
            typer.echo(f"  {label:<38} {path.resolve()}")
    report = Path("eval/report.md")
    if report.is_file():
        typer.echo("")
        typer.echo(report.read_text())
    summary = Path("models/train_run.json")
    if summary.is_file():
        info = json.loads(summary.read_text())
        if "mlflow_run_id" in info:
            typer.echo(f"MLflow run {info['mlflow_run_id']} (browse: .venv/bin/mlflow ui "
                       f"--backend-store-uri {info.get('tracking_uri', 'sqlite:///mlruns/mlflow.db')})")


def register(app: typer.Typer) -> None:
    app.command("results")(results)
