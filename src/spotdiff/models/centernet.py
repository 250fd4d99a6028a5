"""CenterNet head of CYWS (1 class): heatmap / size / offset branches, targets, loss and decoding.

Follows mmdetection's `CenterNetHead` that the reference used, at stride 1 (the decoder output has
the input image's resolution):
- each branch: 3×3 conv (64→64) → ReLU → 1×1 conv; heatmap bias init −2.19 (prior 0.1), size and
  offset convs N(0, 0.001);
- targets: a Gaussian per object at its integer centre, radius `gaussian_radius(h, w, 0.3)`
  (CornerNet/mmdet formula), size (w, h) and sub-pixel offset at the centre pixel;
- loss: Gaussian focal loss (α=2, γ=4, weight 1) + L1 size (weight 0.1) + L1 offset (weight 1),
  each divided by the number of objects (heatmap pixels equal to 1, at least 1; ×2 for size/offset);
- decoding: sigmoid, 3×3 max-pool peaks, top-k per image, xyxy boxes clipped to the image (or,
  with `reference=True`, exactly as the reference's mmdet `get_bboxes`: k raw boxes, unclipped).
Boxes are float xyxy pixels with x2/y2 exclusive (see `spotdiff.boxes`), so centre = (x1+x2)/2.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

HEATMAP_BIAS_INIT = -math.log((1 - 0.1) / 0.1)  # -2.197
MIN_OVERLAP = 0.3
SIZE_WEIGHT = 0.1
OFFSET_WEIGHT = 1.0
HEATMAP_WEIGHT = 1.0


def _branch(cin: int, hidden: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hidden, cout, 1))


class CenterNetHead(nn.Module):
    """Heatmap (logits), size and offset maps from the decoder's 64-channel output."""

    def __init__(self, in_channels: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.heatmap = _branch(in_channels, hidden, 1)
        self.size = _branch(in_channels, hidden, 2)
        self.offset = _branch(in_channels, hidden, 2)
        nn.init.constant_(self.heatmap[-1].bias, HEATMAP_BIAS_INIT)
        for branch in (self.size, self.offset):
            for m in branch.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, std=0.001)
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"heatmap": self.heatmap(x), "size": self.size(x), "offset": self.offset(x)}


# ------------------------------------------------------------------------------------- targets


def gaussian_radius(height: float, width: float, min_overlap: float = MIN_OVERLAP) -> float:
    """Largest centre shift keeping IoU ≥ min_overlap with the box (mmdet's `gaussian_radius`)."""
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 - math.sqrt(b1**2 - 4 * c1)) / 2
    a2, b2, c2 = 4.0, 2 * (height + width), (1 - min_overlap) * width * height
    r2 = (b2 - math.sqrt(b2**2 - 4 * a2 * c2)) / (2 * a2)
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (height + width), (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / (2 * a3)
    return min(r1, r2, r3)


def _gaussian_2d(radius: int, device, dtype) -> torch.Tensor:
    sigma = (2 * radius + 1) / 6
    r = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    g = torch.exp(-(r[None, :] ** 2 + r[:, None] ** 2) / (2 * sigma * sigma))
    g[g < torch.finfo(dtype).eps * g.max()] = 0
    return g


def build_targets(
    boxes: Sequence[torch.Tensor], height: int, width: int, device=None
) -> dict[str, torch.Tensor]:
    """Dense CenterNet targets for a batch: heatmap B×1×H×W, size/offset B×2×H×W, weight B×1×H×W.

    `boxes[i]` is an N_i×4 xyxy tensor in pixels of the H×W map. Empty boxes are ignored.
    """
    bsz = len(boxes)
    device = device if device is not None else (boxes[0].device if bsz else "cpu")
    heat = torch.zeros(bsz, 1, height, width, device=device)
    size = torch.zeros(bsz, 2, height, width, device=device)
    offset = torch.zeros(bsz, 2, height, width, device=device)
    weight = torch.zeros(bsz, 1, height, width, device=device)
    for i, bx in enumerate(boxes):
        bx = torch.as_tensor(bx, dtype=torch.float32).reshape(-1, 4).cpu()
        for x1, y1, x2, y2 in bx.tolist():
            w, h = x2 - x1, y2 - y1
            if not (w > 0 and h > 0):
                continue
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            cxi = min(max(int(math.floor(cx)), 0), width - 1)
            cyi = min(max(int(math.floor(cy)), 0), height - 1)
            radius = max(0, int(gaussian_radius(h, w)))
            g = _gaussian_2d(radius, device, torch.float32)
            left, right = min(cxi, radius), min(width - cxi, radius + 1)
            top, bottom = min(cyi, radius), min(height - cyi, radius + 1)
            region = heat[i, 0, cyi - top : cyi + bottom, cxi - left : cxi + right]
            patch = g[radius - top : radius + bottom, radius - left : radius + right]
            torch.maximum(region, patch, out=region)
            size[i, :, cyi, cxi] = torch.tensor([w, h], device=device)
            offset[i, :, cyi, cxi] = torch.tensor([cx - cxi, cy - cyi], device=device)
            weight[i, 0, cyi, cxi] = 1.0
    return {"heatmap": heat, "size": size, "offset": offset, "weight": weight}


# ---------------------------------------------------------------------------------------- loss


def gaussian_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, gamma: float = 4.0):
    """Sum of the CenterNet/CornerNet focal loss; computed from logits in float32 for stability."""
    logits = logits.float()
    p = logits.sigmoid()
    pos = target.eq(1).float()
    neg_w = (1 - target).pow(gamma)
    pos_loss = -F.logsigmoid(logits) * (1 - p).pow(alpha) * pos
    neg_loss = -F.logsigmoid(-logits) * p.pow(alpha) * neg_w
    return (pos_loss + neg_loss).sum()


def centernet_loss(out: dict[str, torch.Tensor], boxes: Sequence[torch.Tensor],
                   stride: int = 1) -> dict[str, torch.Tensor]:
    """Loss of one image side: {"loss", "heatmap", "size", "offset"} (weights already applied).

    `boxes` are in input pixels; the maps are `stride` times coarser, so targets are in map cells.
    """
    heat_logits = out["heatmap"]
    _, _, h, w = heat_logits.shape
    if stride != 1:
        boxes = [torch.as_tensor(b, dtype=torch.float32) / stride for b in boxes]
    t = build_targets(boxes, h, w, device=heat_logits.device)
    avg = t["heatmap"].eq(1).sum().clamp(min=1).float()
    heat = HEATMAP_WEIGHT * gaussian_focal_loss(heat_logits, t["heatmap"]) / avg
    size = SIZE_WEIGHT * ((out["size"].float() - t["size"]).abs() * t["weight"]).sum() / (2 * avg)
    offset = OFFSET_WEIGHT * ((out["offset"].float() - t["offset"]).abs() * t["weight"]).sum() / (2 * avg)
    return {"loss": heat + size + offset, "heatmap": heat, "size": size, "offset": offset}


# ------------------------------------------------------------------------------------ decoding


@torch.no_grad()
def decode(
    out: dict[str, torch.Tensor], max_boxes: int = 100, kernel: int = 3, reference: bool = False,
    stride: int = 1,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image: (boxes N×4 xyxy, scores N) sorted by score, from the heatmap's local maxima.

    Boxes are in input pixels: map cells × `stride` (the model's output stride).

    Default (what `detect`, evaluation and serving use): sizes floored at 0, boxes clipped to the
    map, and entries of score 0 (not a local maximum) dropped, so N ≤ max_boxes.
    `reference=True`: the reference decode (mmdet `CenterNetHead.get_bboxes`, no rescale, no NMS):
    exactly min(max_boxes, H·W) boxes, centre = peak + offset, box = centre ∓ size/2, raw — no
    clamping, no clipping, no threshold.
    """
    heat = out["heatmap"].float().sigmoid()
    bsz, _, h, w = heat.shape
    peaks = F.max_pool2d(heat, kernel, stride=1, padding=kernel // 2)
    heat = heat * (peaks == heat)
    k = min(max_boxes, h * w)
    scores, idx = heat.flatten(1).topk(k, dim=1)  # B×k, sorted
    ys = torch.div(idx, w, rounding_mode="floor").float()
    xs = (idx % w).float()
    gather_idx = idx[:, None, :].expand(-1, 2, -1)
    size = out["size"].float().flatten(2).gather(2, gather_idx)  # B×2×k
    off = out["offset"].float().flatten(2).gather(2, gather_idx)
    if not reference:
        size = size.clamp(min=0)
    cx, cy = xs + off[:, 0], ys + off[:, 1]
    bw, bh = size[:, 0], size[:, 1]
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=2)
    if stride != 1:
        boxes = boxes * stride
        h, w = h * stride, w * stride
    if reference:
        return [(boxes[i], scores[i]) for i in range(bsz)]
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, w)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, h)
    keep = scores > 0
    return [(boxes[i][keep[i]], scores[i][keep[i]]) for i in range(bsz)]
