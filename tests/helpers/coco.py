"""Tiny COCO-shaped data, written by hand (independent of the data stage).

`make_coco_source`: a COCO instances dataset for the inpaint / pairs tests. Images are smooth random
gradients with a few flat-coloured rectangles and discs; annotations use polygons for rectangles and
compressed RLE for discs, like COCO does for objects and crowds.

`make_coco2017_zips`: the two COCO 2017 zips the data stage downloads (`coco2017` source), with a
handful of images chosen to exercise its selection rules; `coco_png` is image bytes it holds.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
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


def coco_png(seed: int, w: int = 64, h: int = 48) -> bytes:
    """PNG bytes of random pixels (the COCO 2017 zips' image with id `seed`)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_coco2017_zips(root: Path) -> tuple[Path, Path]:
    """A COCO 2017-shaped pair of zips: 4 images, objects of several sizes, one crowd region.
    Returns (annotations_trainval2017.zip, train2017.zip) written in `root`."""
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48} for i in (1, 2, 3, 4)]
    anns = []

    def ann(aid, image_id, x, y, w, h, crowd=0):
        poly = [x, y, x + w, y, x + w, y + h, x, y + h]
        anns.append({"id": aid, "image_id": image_id, "category_id": 1, "segmentation": [poly],
                     "area": float(w * h), "bbox": [x, y, w, h], "iscrowd": crowd})

    ann(1, 1, 2, 2, 10, 10)       # image 1: two objects
    ann(2, 1, 20, 20, 8, 8)
    ann(3, 2, 0, 0, 60, 45)       # image 2: one huge object only (area fraction > 0.5)
    ann(4, 3, 5, 5, 2, 2)         # image 3: tiny object only (area < 10)
    ann(5, 4, 5, 5, 12, 12)       # image 4: one object + a crowd region
    ann(6, 4, 30, 10, 10, 10, crowd=1)
    instances = {"info": {}, "licenses": [], "images": images, "annotations": anns,
                 "categories": [{"id": 1, "name": "thing", "supercategory": "x"}]}
    ann_zip, img_zip = root / "annotations_trainval2017.zip", root / "train2017.zip"
    with zipfile.ZipFile(ann_zip, "w") as zf:
        zf.writestr("annotations/instances_train2017.json", json.dumps(instances))
    with zipfile.ZipFile(img_zip, "w") as zf:
        for img in images:
            zf.writestr(f"train2017/{img['file_name']}", coco_png(img["id"]))
    return ann_zip, img_zip
