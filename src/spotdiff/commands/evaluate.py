"""`spotdiff evaluate`: runs the `evaluate` stage (`spotdiff.stages.evaluate`): both methods on every test set.

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
    run_info: Path = typer.Option(Path("models/train_run.json"), "--run-info", "--train-info",
                                  help="the train stage's run record; its mlflow_run_id is the run the "
                                  "metrics go to"),
    testsets: Path = typer.Option(Path("data/testsets"), help="folder holding the test sets"),
    out: Path = typer.Option(Path("eval"), help="output folder: metrics.json, report.md, plots/, samples/, "
                             "timings.json"),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="log metrics and files to the training "
                                "run in MLflow"),
) -> None:
    """Score CYWS and SSIM on the test sets (VOC AP@0.5, COCO AP); write metrics, curves, report, samples.

    A killed run resumes from the batches it finished. `evaluate.devices` > 1 runs that many processes
    (torchrun), each on its share of the batches: the same files (docs/SCALE-OUT.md)."""
    from spotdiff import distributed
    from spotdiff.methods import is_registry_reference
    from spotdiff.params import load_params
    from spotdiff.stages import evaluate as stage

    cfg = load_params(params)
    if mlflow and is_registry_reference(model):
        # The training summary's run is not this model's: its metrics would be misattributed.
        typer.echo(f"note: --model {model} is a registry reference; metrics are not logged to the "
                   f"training run of {run_info} (pass --no-mlflow to silence this)", err=True)
        mlflow = False
    if distributed.wants_launch(cfg.evaluate.devices, cfg.evaluate.num_nodes):
        stage.check_inputs(cfg, model, testsets, out)  # a user's mistake is one line, not one per process
        args = ["evaluate", "--params", str(params), "--model", str(model), "--run-info", str(run_info),
                "--testsets", str(testsets), "--out", str(out), "--mlflow" if mlflow else "--no-mlflow"]
        distributed.launch("evaluate", args, cfg.evaluate.devices, cfg.evaluate.num_nodes)
        return
    stage.run(cfg, model, run_info if mlflow else None, testsets, out, echo=typer.echo,
              warn=lambda line: typer.echo(line, err=True))


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
