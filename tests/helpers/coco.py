"""A tiny COCO instances dataset for the inpaint / pairs tests (independent of the data stage).

Images are smooth random gradients with a few flat-coloured rectangles and discs; annotations use
polygons for rectangles and compressed RLE for discs, like COCO does for objects and crowds.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils


def make_coco_source(root: Path, num_images: int = 6, height: int = 64, width: int = 80,
                     seed: int = 0) -> Path:
    """Write `root/images/*.png` + `root/instances.json`; returns root."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    ann_id = 1
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(num_images):
        image_id = 10 + i
        base = rng.uniform(40, 200, size=3)
        grad = rng.uniform(-0.8, 0.8, size=(2, 3))
        img = base + xx[..., None] * grad[0] + yy[..., None] * grad[1]
        img = np.clip(img, 0, 255).astype(np.uint8)
        n_objects = 1 + i % 3
        for k in range(n_objects):
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            if k % 2 == 0:  # rectangle, polygon annotation
                w, h = int(rng.integers(10, 20)), int(rng.integers(10, 20))
                x, y = int(rng.integers(2, width - w - 2)), int(rng.integers(2, height - h - 2))
                img[y:y + h, x:x + w] = colour
                segmentation = [[x, y, x + w, y, x + w, y + h, x, y + h]]
                bbox = [x, y, w, h]
                area = float(w * h)
            else:  # disc, RLE annotation
                r = int(rng.integers(5, 9))
                cx, cy = int(rng.integers(r + 1, width - r - 1)), int(rng.integers(r + 1, height - r - 1))
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
                img[mask] = colour
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                segmentation = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
                ys, xs = np.nonzero(mask)
                bbox = [int(xs.min()), int(ys.min()),
                        int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
                area = float(mask.sum())
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": 1 + k % 2,
                                "segmentation": segmentation, "area": area, "bbox": bbox, "iscrowd": 0})
            ann_id += 1
        file_name = f"{image_id:06d}.png"
        cv2.imwrite(str(root / "images" / file_name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
    categories = [{"id": 1, "name": "box", "supercategory": "shape"},
                  {"id": 2, "name": "disc", "supercategory": "shape"}]
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                     "categories": categories}))
    return root
