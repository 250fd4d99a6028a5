"""The `train` stage: Lightning training of CYWS on the pairs manifest, tracked in MLflow.

`train(params, manifest, out_dir)` only builds objects and calls `fit`. The same code runs a tiny
CPU job in the tests, the embedded default on 2 cores, and the paper run on 8 GPUs with DDP
(`train.devices: 8`, `train.strategy: ddp`, `train.precision: bf16-mixed`): Lightning re-launches
this command once per rank, and only rank 0 talks to MLflow and writes files.

The kept model is the one with the lowest `val/loss`; it is written as `models/cyws.pt` in the
weights-only format of `spotdiff.models.cyws.save_model` (no Lightning checkpoint is unpickled).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from spotdiff.data.pairs_dataset import PairDataset, collate_pairs
from spotdiff.errors import SpotdiffError
from spotdiff.fsutil import write_json_atomic
from spotdiff.models.cyws import CYWS, save_model
from spotdiff.params import Params, to_flat_dict


class CywsLitModule(pl.LightningModule):
    """CYWS + its CenterNet loss + Adam; logs `train/*` and `val/*` once per epoch."""

    def __init__(self, model_config: dict, lr: float, weight_decay: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = CYWS.from_params(model_config)
        self.lr = lr
        self.weight_decay = weight_decay

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        out_a, out_b = self.model(batch["image_a"], batch["image_b"])
        losses = self.model.loss(out_a, out_b, batch["boxes_a"], batch["boxes_b"])
        n = batch["image_a"].shape[0]
        for name, value in losses.items():
            self.log(f"{stage}/{name}", value.detach().float(), on_step=False, on_epoch=True,
                     batch_size=n, sync_dist=stage == "val", prog_bar=name == "loss")
        return losses["loss"]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


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

    def _loader(self, dataset: PairDataset, shuffle: bool) -> DataLoader:
        workers = self.params.train.num_workers
        return DataLoader(dataset, batch_size=self.params.train.batch_size, shuffle=shuffle,
                          num_workers=workers, collate_fn=collate_pairs, persistent_workers=workers > 0,
                          drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)


class KeepBestModel(pl.Callback):
    """Write the model (weights only) whenever `val/loss` reaches a new minimum; rank 0 only."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.best = math.inf
        self.best_epoch = -1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: CywsLitModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val/loss")
        if value is None:
            return
        value = float(value)
        if value < self.best:
            self.best, self.best_epoch = value, trainer.current_epoch
            if trainer.is_global_zero:
                save_model(pl_module.model, self.path)


def _trainer_kwargs(params: Params) -> dict[str, Any]:
    t = params.train
    accelerator = "gpu" if t.accelerator == "cuda" else t.accelerator
    kwargs = dict(accelerator=accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
                  precision=t.precision, max_epochs=t.max_epochs, log_every_n_steps=t.log_every_n_steps,
                  deterministic=False, enable_model_summary=False, num_sanity_val_steps=0)
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

    model_config = to_flat_dict(params.model)
    module = CywsLitModule(model_config, params.train.lr, params.train.weight_decay)
    datamodule = PairDataModule(manifest, params)
    best = KeepBestModel(out_dir / "cyws.pt")

    logger: Any = False
    if tracking:
        uri = mlflow_setup.tracking_uri(params)
        if mlflow_setup.is_rank_zero():
            mlflow_setup.setup_mlflow(params)
        logger = MLFlowLogger(experiment_name=params.mlflow.experiment, tracking_uri=uri,
                              run_name=f"train-{params.model.backbone}-{params.model.attention}",
                              log_model=False)
        logger.log_hyperparams({k: v for k, v in to_flat_dict(params).items() if not isinstance(v, (list, tuple))})

    trainer = pl.Trainer(**_trainer_kwargs(params), logger=logger, callbacks=[best],
                         enable_checkpointing=False, default_root_dir=str(out_dir / "lightning"))
    started = time.time()
    trainer.fit(module, datamodule=datamodule)
    elapsed = time.time() - started

    summary: dict[str, Any] = {}
    if trainer.is_global_zero:
        if best.best_epoch < 0:  # (a cyws.pt from an earlier run must not pass for this run's)
            raise SpotdiffError("training ended without a validation result; check train.max_epochs and the val split")
        summary = {
            "best_val_loss": best.best,
            "best_epoch": best.best_epoch,
            "epochs": trainer.current_epoch,
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
            summary["tracking_uri"] = mlflow_setup.redact_uri(mlflow_setup.tracking_uri(params))
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
