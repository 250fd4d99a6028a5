"""`spotdiff evaluate`: the `evaluate` DVC stage — both methods on every test set, AP report, MLflow.

See `spotdiff.evaluate_stage` for what is computed and written.
"""

from __future__ import annotations

from pathlib import Path

import typer


def evaluate(
    params: Path = typer.Option(Path("params.yaml"), help="params file; this stage reads `evaluate`, "
                                "`ssim` and `mlflow`"),
    model: Path = typer.Option(Path("models/cyws.pt"), help="trained CYWS checkpoint (for method cyws)"),
    train_info: Path = typer.Option(Path("models/train.json"), "--train-info",
                                    help="training summary; its mlflow_run_id is the run the metrics go to"),
    testsets: Path = typer.Option(Path("data/testsets"), help="folder holding the test sets"),
    out: Path = typer.Option(Path("eval"), help="output folder: metrics.json, report.md, plots/, samples/"),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="log metrics and files to the training "
                                "run in MLflow"),
) -> None:
    """Score CYWS and SSIM on the test sets (VOC AP@0.5, COCO AP); write metrics, curves, report, samples."""
    from spotdiff.evaluate_stage import evaluate as run
    from spotdiff.params import load_params

    cfg = load_params(params)
    run(cfg, model, train_info if mlflow else None, testsets, out, echo=typer.echo,
        warn=lambda line: typer.echo(line, err=True))


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
