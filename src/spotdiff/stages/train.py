"""The `train` stage (`spotdiff train`): CYWS trained with Lightning on the pairs manifest, tracked in MLflow.

Reads: `params.model`, `params.train`, `params.pairs.augment`, `params.mlflow`; the pairs manifest
and the COCO-Inpainted folder it points at (pairs are augmented as they are loaded).
Writes: `<out>/cyws.pt` (the model with the best `train.monitor`, in the weights-only format of
`spotdiff.models.checkpoint.save_model`), `<out>/train.json` (what was learned: the kept model's step and
validation figures, the pair counts, the model's config: the same bytes whenever the model is),
`<out>/val_predictions.png`, and `<out>/train_run.json` (this run only: the MLflow run id, wall and
CPU seconds, threads, the model's md5; not a DVC output, so timings never change `dvc.lock`).

The same code runs a tiny CPU job in the tests, the embedded default on 2 cores, and the paper run
on 8 GPUs with DDP (`train.devices: 8`, `train.strategy: ddp`, `train.precision: auto`, bf16 there):
Lightning re-launches this command once per rank, and only rank 0 talks to MLflow and writes files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from spotdiff.machine import Capabilities
    from spotdiff.params import Params

SUMMARY = "train.json"
RUN_INFO = "train_run.json"


def _trainer_kwargs(params: Params, caps: Capabilities) -> dict[str, Any]:
    """Lightning Trainer arguments; `train.precision` resolved against `caps` (spotdiff.machine)."""
    import sys

    from spotdiff import tracking as mlflow_setup
    from spotdiff.errors import SpotdiffError
    from spotdiff.machine import resolve_precision
    from spotdiff.training.hardware import check_hardware

    t = params.train
    check_hardware(t)
    accelerator = "gpu" if t.accelerator == "cuda" else t.accelerator
    on_gpu = accelerator == "gpu" or (accelerator == "auto" and caps.cuda_device is not None)
    if not on_gpu and t.precision.startswith("16"):
        raise SpotdiffError("params.yaml: train.precision 16-mixed needs a GPU; use auto, 32-true or bf16-mixed on CPU")
    precision, warning = resolve_precision(t.precision, on_gpu, caps)
    if warning and mlflow_setup.is_rank_zero():
        print(f"spotdiff: warning: {warning}", file=sys.stderr, flush=True)
    kwargs = dict(accelerator=accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
                  precision=precision, max_epochs=t.max_epochs, log_every_n_steps=t.log_every_n_steps,
                  deterministic=False, enable_model_summary=False, num_sanity_val_steps=0)
    if t.max_steps > 0:
        kwargs.update(max_steps=t.max_steps, max_epochs=-1)
    if t.val_every_n_steps > 0:
        kwargs.update(val_check_interval=t.val_every_n_steps, check_val_every_n_epoch=None)
    return kwargs


def run(params: Params, manifest: str | Path, out_dir: str | Path, tracking: bool = True) -> dict:
    """Fit CYWS and write the stage's files (see the module docstring).

    Returns the summary written to `train.json` merged with this run's `train_run.json` (rank 0;
    other ranks return {}).
    """
    import math
    import os
    import sys
    import time

    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.loggers import MLFlowLogger

    from spotdiff import tracking as mlflow_setup
    from spotdiff.errors import SpotdiffError
    from spotdiff.fsutil import file_digest, write_json_atomic
    from spotdiff.machine import capabilities
    from spotdiff.params import to_flat_dict
    from spotdiff.training.callbacks import KeepBestModel
    from spotdiff.training.datamodule import PairDataModule
    from spotdiff.training.lit import CywsLitModule
    from spotdiff.training.preview import draw_val_predictions
    from spotdiff.training.threads import apply_threads

    out_dir = Path(out_dir)
    manifest = Path(manifest)
    caps = capabilities()
    trainer_kwargs = _trainer_kwargs(params, caps)  # this machine can run it: checked before any work
    if not manifest.is_file():
        raise SpotdiffError(f"{manifest}: pairs manifest not found; run `dvc repro pairs` first")
    pl.seed_everything(params.train.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    threads = apply_threads(params.train)
    precision = trainer_kwargs["precision"]
    if mlflow_setup.is_rank_zero():
        print(f"train: precision {precision} (train.precision: {params.train.precision}), {threads} threads; "
              f"{caps.line()}", file=sys.stderr, flush=True)

    t = params.train
    model_config = to_flat_dict(params.model)
    module = CywsLitModule(model_config, t.lr, t.weight_decay, t.lr_schedule, t.warmup_steps,
                           t.warmup_start_factor, t.min_lr_factor, encoder_lr_factor=t.encoder_lr_factor)
    datamodule = PairDataModule(manifest, params)
    best = KeepBestModel(out_dir / "cyws.pt", t.monitor)

    logger: Any = False
    if tracking:
        uri = mlflow_setup.tracking_uri(params)
        if mlflow_setup.is_rank_zero():
            mlflow_setup.setup_mlflow(params)
        logger = MLFlowLogger(experiment_name=params.mlflow.experiment, tracking_uri=uri,
                              run_name=f"train-{params.model.backbone}-{params.model.attention}",
                              log_model=False)
        logger.log_hyperparams({k: v for k, v in to_flat_dict(params).items() if not isinstance(v, (list, tuple))})
        logger.log_hyperparams({"train.precision_resolved": precision, "machine.cpu": caps.cpu_model,
                                "machine.cpu_flags": " ".join(sorted(caps.cpu_flags)) or "none",
                                "machine.gpu": caps.cuda_device or "none"})
        if mlflow_setup.is_rank_zero():
            # who owns the run (a killed run is marked KILLED by the next stage), and which DVC
            # experiment made it (`dvc exp run` sets DVC_EXP_NAME / DVC_EXP_BASELINE_REV)
            mlflow_setup.mark_owner(logger.experiment, logger.run_id)
            for env, tag in mlflow_setup.DVC_EXP_TAGS.items():
                if os.environ.get(env):
                    logger.experiment.set_tag(logger.run_id, tag, os.environ[env])

    callbacks: list[Any] = [best]
    if tracking:
        callbacks.append(pl.callbacks.LearningRateMonitor(logging_interval="step"))
    trainer = pl.Trainer(**trainer_kwargs, logger=logger, callbacks=callbacks,
                         enable_checkpointing=False, default_root_dir=str(out_dir / "lightning"))
    started, cpu_started = time.time(), time.process_time()
    trainer.fit(module, datamodule=datamodule)
    elapsed, cpu = time.time() - started, time.process_time() - cpu_started

    summary: dict[str, Any] = {}
    if trainer.is_global_zero:
        if best.best_epoch < 0:  # (a cyws.pt from an earlier run must not pass for this run's)
            raise SpotdiffError("training ended without a validation result; check train.max_epochs and the val split")
        summary = {
            "monitor": best.monitor,
            "best_val_loss": best.kept.get("val/loss", math.nan),
            "best_val_ap50": best.kept.get("val/ap50", math.nan),
            "best_epoch": best.best_epoch,
            "best_step": best.best_step,
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "train_pairs": len(datamodule.train_set),
            "val_pairs": len(datamodule.val_set),
            "parameters": sum(p.numel() for p in module.model.parameters() if p.requires_grad),
            "model": model_config,
        }
        preview = out_dir / "val_predictions.png"
        draw_val_predictions(out_dir / "cyws.pt", datamodule.val_set, params.train.preview_pairs, preview)
        run_info: dict[str, Any] = {"model_md5": file_digest(out_dir / "cyws.pt"), "seconds": round(elapsed, 2),
                                    "cpu_seconds": round(cpu, 2), "threads": threads,
                                    "precision": precision, "machine": caps.as_dict(),
                                    "mlflow_run_id": None, "tracking_uri": None}
        if tracking:
            run_info["mlflow_run_id"] = logger.run_id
            run_info["tracking_uri"] = mlflow_setup.portable_uri(mlflow_setup.tracking_uri(params))
            _log_outcome(logger, out_dir, summary, run_info, preview)
        write_json_atomic(out_dir / SUMMARY, summary)
        write_json_atomic(out_dir / RUN_INFO, run_info)
        return {**summary, **run_info}
    return summary


def _log_outcome(logger: Any, out_dir: Path, summary: dict, run_info: dict, preview: Path) -> None:
    """Best model, summaries, timings and the picture of predictions on a few val pairs, into the run."""
    client, run_id = logger.experiment, logger.run_id
    client.log_metric(run_id, "best/val_loss", summary["best_val_loss"])
    client.log_metric(run_id, "time/train_seconds", run_info["seconds"])
    client.log_metric(run_id, "time/train_cpu_seconds", run_info["cpu_seconds"])
    client.set_tag(run_id, "spotdiff.model_md5", run_info["model_md5"])
    client.log_artifact(run_id, str(out_dir / "cyws.pt"), artifact_path="model")
    if preview.is_file():
        client.log_artifact(run_id, str(preview), artifact_path="previews")
    client.log_dict(run_id, summary, "summary/train.json")
    client.log_dict(run_id, run_info, "summary/train_run.json")


def train(
    params: Path = typer.Option(Path("params.yaml"), help="params file; reads model, train, pairs.augment, mlflow"),
    pairs: Path = typer.Option(Path("data/pairs/manifest.json"), help="the pairs stage's manifest"),
    out: Path = typer.Option(Path("models"), help="output folder: cyws.pt (best train.monitor), train.json, train_run.json"),
    no_tracking: bool = typer.Option(False, "--no-tracking", help="do not log to MLflow"),
) -> None:
    """Train CYWS on the pairs manifest; keep the model with the best `train.monitor`."""
    from spotdiff.params import load_params
    from spotdiff.training.hardware import check_hardware

    loaded = load_params(params)
    check_hardware(loaded.train, source=str(params))  # (run checks again, naming params.yaml)
    summary = run(loaded, pairs, out, tracking=not no_tracking)
    if summary:
        typer.echo(f"train: best val/loss {summary['best_val_loss']:.4f} at epoch {summary['best_epoch']} "
                   f"({summary['train_pairs']} train / {summary['val_pairs']} val pairs, "
                   f"{summary['seconds']:.0f} s, {summary['cpu_seconds']:.0f} CPU-s) -> {out / 'cyws.pt'}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
