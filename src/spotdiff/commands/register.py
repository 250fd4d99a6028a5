"""`spotdiff register`: the `register` DVC stage (log the model to MLflow, register it, maybe promote it)."""

from __future__ import annotations

from pathlib import Path

import typer


def register_cmd(
    params: Path = typer.Option(Path("params.yaml"), help="params file; reads `register` and `mlflow`"),
    model: Path = typer.Option(Path("models/cyws.pt"), help="trained checkpoint (train stage)"),
    train_info: Path = typer.Option(Path("models/train.json"), help="training summary with mlflow_run_id"),
    metrics: Path = typer.Option(Path("eval/metrics.json"), help="evaluation metrics (evaluate stage)"),
    out: Path = typer.Option(Path("registry/registration.json"), help="where the decision is recorded"),
) -> None:
    """Register the trained model in MLflow (alias challenger; champion when it beats the current one)."""
    from spotdiff.params import load_params
    from spotdiff.registry import register_checkpoint

    cfg = load_params(params)
    record = register_checkpoint(cfg, model, train_info, metrics, out)
    metric = record["primary_metric"]
    typer.echo(f"register: {record['model_name']} version {record['version']} "
               f"({metric['name']} = {metric['value']:.4f}), aliases {', '.join(record['aliases'])}; "
               f"{record['decision']}: {record['reason']} -> {out}")


def register(app: typer.Typer) -> None:
    app.command("register")(register_cmd)
