"""The `data` stage: write a COCO-format instance dataset (`images/` + `instances.json`).

Two sources behind one output format: `embedded` (generated offline, deterministic) and
`coco2017` (the real download, selected by params as the paper's 60 000-image subset). The whole
folder is built in a temporary sibling and swapped in at the end, so a killed run leaves nothing a
rerun would trust.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from spotdiff import boxes as box_fmt
from spotdiff.data import embedded
from spotdiff.data.coco2017 import build_coco2017
from spotdiff.fsutil import atomic_dir
from spotdiff.imageio import write_png
from spotdiff.params import DataParams

INSTANCES = "instances.json"
IMAGES = "images"


def encode_mask(mask: np.ndarray) -> dict:
    """COCO compressed RLE of an H×W bool mask, JSON-ready."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}



def build_embedded(params: DataParams, out_dir: Path) -> dict:
    """Generate `params.num_images` scenes into `out_dir`; return the COCO dict written."""
    (out_dir / IMAGES).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = 1
    for index in tqdm(range(params.num_images), desc="data: generating scenes", unit="img"):
        rng = np.random.default_rng([params.seed, index])
        n_objects = int(rng.integers(params.min_objects, params.max_objects + 1))
        image, objects = embedded.generate_scene(rng, params.image_width, params.image_height, n_objects)
        image_id = index + 1
        file_name = f"{image_id:06d}.png"
        write_png(out_dir / IMAGES / file_name, image, compress_level=6)
        images.append({"id": image_id, "file_name": file_name, "width": params.image_width,
                       "height": params.image_height})
        for obj in objects:
            box = box_fmt.xyxy_to_xywh(box_fmt.mask_to_box(obj.mask))[0]
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": obj.category_id,
                "segmentation": encode_mask(obj.mask), "area": float(obj.mask.sum()),
                "bbox": [float(v) for v in box], "iscrowd": 0,
            })
            ann_id += 1
    return {
        "info": {"description": "spotdiff embedded dataset (generated offline from scikit-image photos)",
                 "version": "1", "source": "embedded", "seed": params.seed},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": embedded.CATEGORIES,
    }


def write_dataset(params: DataParams, out_dir: str | Path) -> dict:
    """Build the dataset for `params.source` atomically into `out_dir`; return a small summary."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        if params.source == "embedded":
            coco = build_embedded(params, tmp)
        else:
            coco = build_coco2017(params.coco, tmp)
        (tmp / INSTANCES).write_text(json.dumps(coco, separators=(",", ":")))
    return summarize(coco)


def summarize(coco: dict) -> dict:
    sizes = {"small": 0, "medium": 0, "large": 0}
    for ann in coco["annotations"]:
        sizes[embedded.size_class(ann["area"])] += 1
    return {"images": len(coco["images"]), "annotations": len(coco["annotations"]), "by_size": sizes}
