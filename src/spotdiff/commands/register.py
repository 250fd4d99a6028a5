"""`spotdiff register`: runs the `register` stage (`spotdiff.stages.register`)."""

from __future__ import annotations

from pathlib import Path

import typer


def register_cmd(
    params: Path = typer.Option(Path("params.yaml"), help="params file; reads `register` and `mlflow`"),
    model: Path = typer.Option(Path("models/cyws.pt"), help="trained checkpoint (train stage)"),
    run_info: Path = typer.Option(Path("models/train_run.json"), "--run-info",
                                  help="the train stage's run record (its mlflow_run_id gets the model)"),
    metrics: Path = typer.Option(Path("eval/metrics.json"), help="evaluation metrics (evaluate stage)"),
    out: Path = typer.Option(Path("registry/registered.json"),
                             help="what was registered (model md5, metric, rule): the DVC output"),
    record: Path = typer.Option(Path("registry/registration.json"),
                                help="this registration: version, aliases, decision and reason"),
) -> None:
    """Register the trained model in MLflow (alias challenger; champion when it beats the current one)."""
    from spotdiff.params import load_params
    from spotdiff.stages import register as stage

    result = stage.run(load_params(params), model, run_info, metrics, out, record=record,
                       warn=lambda line: typer.echo(line, err=True))
    metric = result["primary_metric"]
    typer.echo(f"register: {result['model_name']} version {result['version']} "
               f"({metric['name']} = {metric['value']:.4f}), aliases {', '.join(result['aliases'])}; "
               f"{result['decision']}: {result['reason']} -> {record}")


def register(app: typer.Typer) -> None:
    app.command("register")(register_cmd)
