"""The LightningModule that trains CYWS: its loss, the optimiser, the per-step learning rate, `val/ap50`.

Metrics: `train/*` every `train.log_every_n_steps` steps, `val/*` and `val/ap50` (VOC AP@0.5 over
the val pairs, 100 boxes, no NMS: the paper's protocol) at each validation.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch

from spotdiff.evaluation.metrics import average_precision
from spotdiff.models.cyws import CYWS


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
                 iou_threshold: float = 0.5, encoder_lr_factor: float = 1.0) -> None:
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
        dets_a = self.model.decode(out_a)
        dets_b = self.model.decode(out_b)
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
        result = average_precision(self._val_gt, [d[0] for d in self._val_dets], [d[1] for d in self._val_dets],
                                   iou_threshold=self.hparams.iou_threshold, max_boxes=self.model.max_boxes)
        ap = 0.0 if math.isnan(result.ap) else float(result.ap)
        self.log("val/ap50", torch.tensor(ap), sync_dist=True, prog_bar=True)
        self._val_gt, self._val_dets = [], []

    def configure_optimizers(self):
        # The encoder may learn slower than the rest (train.encoder_lr_factor): ImageNet features are a
        # good start that a full learning rate disturbs; the schedule scales both groups alike.
        encoder = list(self.model.encoder.parameters())
        mine = {id(p) for p in encoder}
        groups = [{"params": [p for p in self.parameters() if id(p) not in mine], "lr": self.lr}]
        if encoder:
            groups.append({"params": encoder, "lr": self.lr * self.hparams.encoder_lr_factor})
        optimizer = torch.optim.Adam(groups, lr=self.lr, weight_decay=self.weight_decay)
        h = self.hparams
        if h.schedule == "constant" and h.warmup_steps == 0:
            return optimizer
        factor = WarmupCosine(h.schedule, h.warmup_steps, self.trainer.estimated_stepping_batches,
                              h.warmup_start_factor, h.min_lr_factor)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
