"""The box format, in one place: float xyxy in pixels of the image the box belongs to, x2/y2 exclusive.

An object covering pixel columns 5..14 has x1=5, x2=15, so width = x2 - x1. COCO's `bbox` is
[x, y, w, h] with the same convention. Everything else converts through these helpers.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import nms


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def mask_to_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight xyxy box of the True pixels of an H×W mask, or None when the mask is empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return np.array([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=np.float64)


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return boxes


def box_areas(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU (len(a) × len(b)) of xyxy boxes; 0 where a union is empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clip(0).prod(axis=2)
    union = box_areas(a)[:, None] + box_areas(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def scale_boxes(boxes: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Map boxes between two resolutions of the same image (x by sx, y by sy)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return boxes * np.array([sx, sy, sx, sy])


def to_tensor(boxes: np.ndarray | list) -> torch.Tensor:
    return torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))


def suppress(boxes: np.ndarray, scores: np.ndarray, top_k: int = 5, iou: float = 0.3
             ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k boxes after non-maximum suppression, for display (the paper's Fig. 4 shows top 5)."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4), scores.reshape(0)
    keep = nms(torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(scores, dtype=torch.float32), iou)
    keep = keep[:top_k].numpy()
    return boxes[keep], scores[keep]
