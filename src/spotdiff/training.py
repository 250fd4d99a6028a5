"""The `train` stage: Lightning training of CYWS on the pairs manifest, tracked in MLflow.

`train(params, manifest, out_dir)` only builds objects and calls `fit`. The same code runs a tiny
CPU job in the tests, the embedded default on 2 cores, and the paper run on 8 GPUs with DDP
(`train.devices: 8`, `train.strategy: ddp`, `train.precision: bf16-mixed`): Lightning re-launches
this command once per rank, and only rank 0 talks to MLflow and writes files.

The kept model is the one with the best `train.monitor` (the paper: lowest `val/loss`); it is
written as `models/cyws.pt` in the weights-only format of `spotdiff.models.cyws.save_model` (no
Lightning checkpoint is unpickled).

What makes a CPU run worth its minutes (README "Learning on CPU"): a step budget
(`train.max_steps`), validation every `val_every_n_steps` with a cheap VOC AP@0.5 on the val pairs
(`val/ap50`, the paper's protocol via `spotdiff.evaluation`), warm-up + cosine learning rate per
step (`lr_schedule`), an explicit thread count (`num_threads`; loader workers run one thread each),
and a geometry curriculum (identity first, affine later: `affine_start_step`, `affine_ramp_steps`).
Metrics: `train/*` every `log_every_n_steps` steps, `val/*` at each validation, `lr` per step.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from spotdiff.data.pairs_dataset import AffineCurriculum, CurriculumSampler, PairDataset, collate_pairs
from spotdiff.errors import SpotdiffError
from spotdiff.fsutil import write_json_atomic
from spotdiff.models.centernet import decode
from spotdiff.models.cyws import CYWS, save_model
from spotdiff.params import Params, TrainParams, to_flat_dict


class WarmupCosine:
    """LR factor per optimiser step: linear warm-up from `start_factor` to 1 over `warmup_steps`,
    then cosine from 1 to `min_factor` at `total_steps` ("cosine"), or 1 ("constant")."""

    def __init__(self, schedule: str, warmup_steps: int, total_steps: int, start_factor: float = 0.01,
                 min_factor: float = 0.01) -> None:
        self.schedule, self.warmup_steps, self.total_steps = schedule, int(warmup_steps), int(total_steps)
        self.start_factor, self.min_factor = float(start_factor), float(min_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_factor + (1 - self.start_factor) * step / self.warmup_steps
        if self.schedule != "cosine":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


class CywsLitModule(pl.LightningModule):
    """CYWS + its CenterNet loss + Adam (+ the per-step LR schedule); logs `train/*`, `val/*`, `val/ap50`."""

    def __init__(self, model_config: dict, lr: float, weight_decay: float, schedule: str = "constant",
                 warmup_steps: int = 0, warmup_start_factor: float = 0.01, min_lr_factor: float = 0.01,
                 iou_threshold: float = 0.5) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = CYWS.from_params(model_config)
        self.lr = lr
        self.weight_decay = weight_decay
        self._val_gt: list = []
        self._val_dets: list = []

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        out_a, out_b = self.model(batch["image_a"], batch["image_b"])
        losses = self.model.loss(out_a, out_b, batch["boxes_a"], batch["boxes_b"])
        n = batch["image_a"].shape[0]
        train = stage == "train"
        for name, value in losses.items():
            self.log(f"{stage}/{name}", value.detach().float(), on_step=train, on_epoch=not train,
                     batch_size=n, sync_dist=not train, prog_bar=name == "loss")
        if not train:
            self._collect_detections(batch, out_a, out_b)
        return losses["loss"]

    def _collect_detections(self, batch: dict, out_a: dict, out_b: dict) -> None:
        """Per image, in the paper's order [pair.a, pair.b, ...]: GT boxes and top-k detections."""
        dets_a = decode(out_a, self.model.max_boxes)
        dets_b = decode(out_b, self.model.max_boxes)
        for i in range(len(dets_a)):
            for gt, (boxes, scores) in ((batch["boxes_a"][i], dets_a[i]), (batch["boxes_b"][i], dets_b[i])):
                self._val_gt.append(gt.detach().cpu().numpy().reshape(-1, 4))
                self._val_dets.append((boxes.cpu().numpy(), scores.cpu().numpy()))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def on_validation_epoch_start(self) -> None:
        self._val_gt, self._val_dets = [], []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        """`val/ap50`: VOC AP@0.5 over this rank's val images (the paper's protocol, 100 boxes, no NMS)."""
        from spotdiff.evaluation import average_precision

        result = average_precision(self._val_gt, [d[0] for d in self._val_dets], [d[1] for d in self._val_dets],
                                   iou_threshold=self.hparams.iou_threshold, max_boxes=self.model.max_boxes)
        ap = 0.0 if math.isnan(result.ap) else float(result.ap)
        self.log("val/ap50", torch.tensor(ap), sync_dist=True, prog_bar=True)
        self._val_gt, self._val_dets = [], []

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        h = self.hparams
        if h.schedule == "constant" and h.warmup_steps == 0:
            return optimizer
        factor = WarmupCosine(h.schedule, h.warmup_steps, self.trainer.estimated_stepping_batches,
                              h.warmup_start_factor, h.min_lr_factor)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class PairDataModule(pl.LightningDataModule):
    """Train / val loaders over the `pairs` stage's manifest."""

    def __init__(self, manifest: Path, params: Params) -> None:
        super().__init__()
        self.manifest = Path(manifest)
        self.params = params

    def setup(self, stage: str | None = None) -> None:
        size = self.params.model.image_size
        augment = self.params.pairs.augment
        seed = self.params.train.seed
        self.train_set = PairDataset(self.manifest, "train", size, augment, seed=seed)
        self.val_set = PairDataset(self.manifest, "val", size, augment, seed=seed)
        if len(self.train_set) == 0 or len(self.val_set) == 0:
            raise SpotdiffError(f"{self.manifest}: needs both train and val pairs "
                                f"(got {len(self.train_set)} / {len(self.val_set)}); add images or pairs")
        t = self.params.train
        self.sampler = CurriculumSampler(len(self.train_set), t.batch_size, seed,
                                         AffineCurriculum(t.affine_start_step, t.affine_ramp_steps))

    def _loader(self, dataset: PairDataset, sampler: CurriculumSampler | None) -> DataLoader:
        workers = self.params.train.num_workers
        return DataLoader(dataset, batch_size=self.params.train.batch_size, sampler=sampler, shuffle=False,
                          num_workers=workers, collate_fn=collate_pairs, persistent_workers=workers > 0,
                          drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, None)


class KeepBestModel(pl.Callback):
    """Write the model (weights only) whenever `monitor` reaches a new best; rank 0 only.

    `val/loss` is minimised, `val/ap50` maximised (the first validation always writes). Records the
    val loss and AP of the kept model either way.
    """

    def __init__(self, path: Path, monitor: str = "val/loss") -> None:
        self.path = Path(path)
        self.monitor = monitor
        self.sign = -1.0 if monitor == "val/ap50" else 1.0
        self.best = math.inf
        self.best_epoch = -1
        self.best_step = -1
        self.kept: dict[str, float] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: CywsLitModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = self.sign * float(value)
        if value < self.best:
            self.best, self.best_epoch, self.best_step = value, trainer.current_epoch, trainer.global_step
            self.kept = {k: float(trainer.callback_metrics[k]) for k in ("val/loss", "val/ap50")
                         if k in trainer.callback_metrics}
            if trainer.is_global_zero:
                save_model(pl_module.model, self.path)


def physical_cores() -> int:
    """Physical CPU cores this process may run on (hyper-threads not counted)."""
    import os

    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        allowed = os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or allowed
        logical = psutil.cpu_count(logical=True) or allowed
        per_core = max(1, logical // physical)
    except ImportError:
        per_core = 1
    return max(1, allowed // per_core)


def apply_threads(train_params: TrainParams) -> int:
    """Set the trainer's intra-op threads (`train.num_threads`, 0 = physical cores); returns the count.

    DataLoader workers already run one thread each (torch sets it in every worker), so with
    `num_workers` > 0 on a small machine, fewer trainer threads may be faster: measure.
    """
    threads = train_params.num_threads or physical_cores()
    torch.set_num_threads(threads)
    return threads


def _trainer_kwargs(params: Params) -> dict[str, Any]:
    t = params.train
    accelerator = "gpu" if t.accelerator == "cuda" else t.accelerator
    kwargs = dict(accelerator=accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
                  precision=t.precision, max_epochs=t.max_epochs, log_every_n_steps=t.log_every_n_steps,
                  deterministic=False, enable_model_summary=False, num_sanity_val_steps=0)
    if t.max_steps > 0:
        kwargs.update(max_steps=t.max_steps, max_epochs=-1)
    if t.val_every_n_steps > 0:
        kwargs.update(val_check_interval=t.val_every_n_steps, check_val_every_n_epoch=None)
    if accelerator == "cpu" and t.precision.startswith("16"):
        raise SpotdiffError("params.yaml: train.precision 16-mixed needs a GPU; use 32-true or bf16-mixed on CPU")
    return kwargs


def train(params: Params, manifest: Path, out_dir: Path, tracking: bool = True) -> dict:
    """Fit CYWS; write `<out_dir>/cyws.pt` and `<out_dir>/train.json`; return the summary."""
    from pytorch_lightning.loggers import MLFlowLogger

    from spotdiff import tracking as mlflow_setup

    out_dir = Path(out_dir)
    manifest = Path(manifest)
    if not manifest.is_file():
        raise SpotdiffError(f"{manifest}: pairs manifest not found; run `dvc repro pairs` first")
    pl.seed_everything(params.train.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    threads = apply_threads(params.train)

    t = params.train
    model_config = to_flat_dict(params.model)
    module = CywsLitModule(model_config, t.lr, t.weight_decay, t.lr_schedule, t.warmup_steps,
                           t.warmup_start_factor, t.min_lr_factor)
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

    callbacks: list[pl.Callback] = [best]
    if tracking:
        callbacks.append(pl.callbacks.LearningRateMonitor(logging_interval="step"))
    trainer = pl.Trainer(**_trainer_kwargs(params), logger=logger, callbacks=callbacks,
                         enable_checkpointing=False, default_root_dir=str(out_dir / "lightning"))
    started = time.time()
    trainer.fit(module, datamodule=datamodule)
    elapsed = time.time() - started

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
            "threads": threads,
            "train_pairs": len(datamodule.train_set),
            "val_pairs": len(datamodule.val_set),
            "seconds": round(elapsed, 2),
            "parameters": sum(p.numel() for p in module.model.parameters() if p.requires_grad),
            "model": model_config,
        }
        preview = out_dir / "val_predictions.png"
        draw_val_predictions(out_dir / "cyws.pt", datamodule.val_set, params.train.preview_pairs, preview)
        if tracking:
            summary["mlflow_run_id"] = logger.run_id
            summary["tracking_uri"] = mlflow_setup.portable_uri(mlflow_setup.tracking_uri(params))
            _log_outcome(logger, out_dir, summary, preview)
        write_json_atomic(out_dir / "train.json", summary)
    return summary


def _log_outcome(logger: Any, out_dir: Path, summary: dict, preview: Path) -> None:
    """Best model, summary and the picture of predictions on a few val pairs, into the MLflow run."""
    client, run_id = logger.experiment, logger.run_id
    client.log_metric(run_id, "best/val_loss", summary["best_val_loss"])
    client.log_artifact(run_id, str(out_dir / "cyws.pt"), artifact_path="model")
    if preview.is_file():
        client.log_artifact(run_id, str(preview), artifact_path="previews")
    client.log_dict(run_id, summary, "summary/train.json")


def draw_val_predictions(model_path: Path, dataset: PairDataset, count: int, out_path: Path) -> None:
    """Ground truth (green) and the top-5 predictions after suppression (red) on `count` val pairs."""
    import numpy as np

    from spotdiff.fsutil import atomic_path
    from spotdiff.methods.learned import suppress
    from spotdiff.models.cyws import load_model
    from spotdiff.render import draw_boxes, side_by_side

    model = load_model(model_path)
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    if not items:
        return
    batch = collate_pairs(items)
    dets_a, dets_b = model.predict(batch["image_a"], batch["image_b"])
    rows = []
    for i in range(len(items)):
        tiles = []
        for key, (boxes, scores) in (("a", dets_a[i]), ("b", dets_b[i])):
            image = (batch[f"image_{key}"][i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            image = draw_boxes(image, batch[f"boxes_{key}"][i].numpy(), color=(0, 200, 0), show_scores=False,
                               labels=["gt"] * len(batch[f"boxes_{key}"][i]))
            top_boxes, top_scores = suppress(boxes.numpy(), scores.numpy(), top_k=5)
            tiles.append(draw_boxes(image, top_boxes, scores=top_scores, color=(230, 40, 40)))
        rows.append(side_by_side(tiles, captions=[f"{items[i]['pair_id']} A", "B"]))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    grid = side_by_side([np.concatenate(rows, axis=0)],
                        header="validation pairs: ground truth (green), top-5 predictions (red)")
    from PIL import Image

    with atomic_path(out_path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
