"""COCO 2017 from the official site: resumable, verified download, safe extraction, selection.

`build_coco2017` downloads the annotations zip and the train images zip (resuming `.part` files
with HTTP Range requests, verifying size and md5), reads the instances JSON with pycocotools,
selects images by params (object-area bounds, objects per image, max images — the paper used
60 000 train images) and extracts only the selected images. Zip members whose path would escape
the target folder are refused.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

from spotdiff.download import download, extract_archive, safe_member_path
from spotdiff.errors import SpotdiffError
from spotdiff.params import CocoSourceParams

HINT = "check data.coco.base_url"

def select(instances: dict, params: CocoSourceParams, source: str | Path = "instances") -> dict:
    """Keep non-crowd objects within the area bounds; keep images with an allowed object count.

    An annotation or image lacking a key COCO instances files always have (`area`, `image_id`,
    `width`, ...) or holding a value of the wrong type raises SpotdiffError naming `source`."""
    try:
        return _select(instances, params)
    except KeyError as exc:
        raise SpotdiffError(f"{source}: an entry lacks the COCO key {exc.args[0]!r}; not a complete COCO "
                            "instances file (delete it and rerun to download it again)") from None
    except (TypeError, AttributeError, ValueError) as exc:
        raise SpotdiffError(f"{source}: malformed COCO instances ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it and rerun") from None


def _select(instances: dict, params: CocoSourceParams) -> dict:
    by_image: dict[int, list[dict]] = {}
    images = {img["id"]: img for img in instances["images"]}
    for ann in instances["annotations"]:
        img = images.get(ann["image_id"])
        if img is None or ann.get("iscrowd", 0):
            continue
        if ann["area"] < params.min_object_area:
            continue
        if ann["area"] > params.max_object_area_fraction * img["width"] * img["height"]:
            continue
        by_image.setdefault(ann["image_id"], []).append(ann)
    # images where every crowd region is absent would be cleaner, but COCO-Inpainted kept them too
    kept_ids = sorted(i for i, anns in by_image.items()
                      if params.min_objects_per_image <= len(anns) <= params.max_objects_per_image)
    kept_ids = kept_ids[: params.max_images]
    kept = set(kept_ids)
    return {
        "info": {**instances.get("info", {}), "source": "coco2017", "selection": {
            "max_images": params.max_images, "min_object_area": params.min_object_area,
            "max_object_area_fraction": params.max_object_area_fraction,
            "min_objects_per_image": params.min_objects_per_image,
            "max_objects_per_image": params.max_objects_per_image}},
        "licenses": instances.get("licenses", []),
        "images": [images[i] for i in kept_ids],
        "annotations": [a for i in kept_ids for a in by_image[i]] if kept else [],
        "categories": instances["categories"],
    }


def build_coco2017(params: CocoSourceParams, out_dir: Path) -> dict:
    """Download (or reuse) COCO 2017 train, select, and extract the selected images into `out_dir`."""
    downloads = Path(params.download_dir)
    base = params.base_url.rstrip("/")
    ann_zip = download(f"{base}/{params.annotations_zip}", downloads / Path(params.annotations_zip).name,
                       params.annotations_md5, hint=HINT)
    img_zip = download(f"{base}/{params.images_zip}", downloads / Path(params.images_zip).name,
                       params.images_md5, hint=HINT)
    ann_dir = downloads / "annotations_extracted"
    extract_archive(ann_zip, ann_dir, [params.annotations_member], desc="extract annotations")
    ann_path = safe_member_path(ann_dir, params.annotations_member, ann_zip)
    try:
        instances = json.loads(ann_path.read_text())
        _ = instances["images"], instances["annotations"], instances["categories"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise SpotdiffError(f"{ann_path}: not a COCO instances file; delete {ann_zip} and rerun") from None
    selected = select(instances, params, ann_path)
    if not selected["images"]:
        raise SpotdiffError("data.coco: no image passes the selection; loosen the object-area or count bounds")
    try:
        with zipfile.ZipFile(img_zip) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError, EOFError):
        raise SpotdiffError(f"{img_zip}: not a readable zip archive; delete it and rerun to download it "
                            "again") from None
    prefix = Path(params.images_zip).stem  # train2017
    members = []
    for img in selected["images"]:
        member = f"{prefix}/{img['file_name']}"
        if member not in names:
            raise SpotdiffError(f"{img_zip}: image {member} listed in the annotations is missing from the zip")
        members.append(member)
    staging = out_dir / "_staging"
    extract_archive(img_zip, staging, members, desc="extract images")
    (staging / prefix).rename(out_dir / "images")
    shutil.rmtree(staging, ignore_errors=True)
    return selected
