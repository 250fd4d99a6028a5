"""`spotdiff evaluate`: the `evaluate` DVC stage — both methods on every test set, AP report, MLflow.

See `spotdiff.evaluation.stage` for what is computed and written; `run_evaluation` there does it.
"""

from __future__ import annotations

from pathlib import Path

import typer


def evaluate(
    params: Path = typer.Option(Path("params.yaml"), help="params file; this stage reads `evaluate`, "
                                "`ssim` and `mlflow`"),
    model: str = typer.Option("models/cyws.pt", help="CYWS model (for method cyws): a checkpoint path "
                              "(ours or the authors' published .ckpt) or models:/NAME@ALIAS, "
                              "models:/NAME/VERSION, runs:/RUN_ID/PATH"),
    train_info: Path = typer.Option(Path("models/train.json"), "--train-info",
                                    help="training summary; its mlflow_run_id is the run the metrics go to"),
    testsets: Path = typer.Option(Path("data/testsets"), help="folder holding the test sets"),
    out: Path = typer.Option(Path("eval"), help="output folder: metrics.json, report.md, plots/, samples/, "
                             "timings.json"),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="log metrics and files to the training "
                                "run in MLflow"),
) -> None:
    """Score CYWS and SSIM on the test sets (VOC AP@0.5, COCO AP); write metrics, curves, report, samples."""
    from spotdiff.evaluation.stage import run_evaluation
    from spotdiff.methods import is_registry_reference
    from spotdiff.params import load_params

    cfg = load_params(params)
    if mlflow and is_registry_reference(model):
        # The training summary's run is not this model's: its metrics would be misattributed.
        typer.echo(f"note: --model {model} is a registry reference; metrics are not logged to the "
                   f"training run of {train_info} (pass --no-mlflow to silence this)", err=True)
        mlflow = False
    run_evaluation(cfg, model, train_info if mlflow else None, testsets, out, echo=typer.echo,
                   warn=lambda line: typer.echo(line, err=True))


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
