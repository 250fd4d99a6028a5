"""COCO 2017 from the official site: resumable, verified download, safe extraction, selection.

`build_coco2017` downloads the annotations zip and the train images zip (resuming `.part` files
with HTTP Range requests, verifying size and md5), reads the instances JSON with pycocotools,
selects images by params (object-area bounds, objects per image, max images — the paper used
60 000 train images) and extracts only the selected images. Zip members whose path would escape
the target folder are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from spotdiff.errors import SpotdiffError
from spotdiff.params import CocoSourceParams

CHUNK = 1 << 20


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str = "", timeout: float = 60.0) -> Path:
    """Download `url` to `dest`, resuming a previous `.part`; verify md5 when given.

    A finished file is only renamed into place after its size (Content-Length) and md5 match, so a
    killed download is resumed, never trusted.
    """
    dest = Path(dest)
    if dest.exists() and (not md5 or md5sum(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # asked past the end: the part file is complete (or bad)
            response = None
        else:
            raise SpotdiffError(f"{url}: download failed (HTTP {exc.code}); check data.coco.base_url") from None
    except (urllib.error.URLError, OSError) as exc:
        raise SpotdiffError(f"{url}: download failed ({getattr(exc, 'reason', exc)}); "
                            "check the network or data.coco.base_url, then rerun to resume") from None
    if response is not None:
        with response:
            resumed = response.status == 206
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with open(part, "ab" if resumed else "wb") as fh, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=f"download {dest.name}"
            ) as bar:
                for block in iter(lambda: response.read(CHUNK), b""):
                    fh.write(block)
                    bar.update(len(block))
            if total is not None and part.stat().st_size != total:
                raise SpotdiffError(f"{url}: got {part.stat().st_size} of {total} bytes; rerun to resume")
    if md5 and md5sum(part) != md5:
        part.unlink()
        raise SpotdiffError(f"{url}: md5 mismatch (expected {md5}); the partial file was removed, rerun")
    os.replace(part, dest)
    return dest


def safe_member_path(root: Path, name: str) -> Path:
    """Where zip member `name` goes under `root`; refuse absolute paths and `..` escapes."""
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or name.startswith(("/", "\\")) or ":" in pure.parts[0]:
        raise SpotdiffError(f"zip member {name!r} would escape {root}; refusing to extract this archive")
    target = (root / pure).resolve()
    if root.resolve() not in target.parents and target != root.resolve():
        raise SpotdiffError(f"zip member {name!r} would escape {root}; refusing to extract this archive")
    return target


def extract_members(archive: Path, root: Path, names: list[str] | None = None, desc: str = "extract") -> None:
    """Extract `names` (default: all) from a zip into `root`, refusing paths that escape it."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise SpotdiffError(f"{archive}: not a valid zip file; delete it and rerun to download again") from None
    with zf:
        members = zf.namelist() if names is None else names
        targets = [(m, safe_member_path(root, m)) for m in members]  # check all before writing any
        for member, target in tqdm(targets, desc=desc, unit="file"):
            if member.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
            except KeyError:
                raise SpotdiffError(f"{archive}: member {member} is missing; the archive is incomplete") from None


def select(instances: dict, params: CocoSourceParams) -> dict:
    """Keep non-crowd objects within the area bounds; keep images with an allowed object count."""
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
                       params.annotations_md5)
    img_zip = download(f"{base}/{params.images_zip}", downloads / Path(params.images_zip).name,
                       params.images_md5)
    ann_dir = downloads / "annotations_extracted"
    extract_members(ann_zip, ann_dir, [params.annotations_member], desc="extract annotations")
    ann_path = safe_member_path(ann_dir, params.annotations_member)
    try:
        instances = json.loads(ann_path.read_text())
        _ = instances["images"], instances["annotations"], instances["categories"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise SpotdiffError(f"{ann_path}: not a COCO instances file; delete {ann_zip} and rerun") from None
    selected = select(instances, params)
    if not selected["images"]:
        raise SpotdiffError("data.coco: no image passes the selection; loosen the object-area or count bounds")
    with zipfile.ZipFile(img_zip) as zf:
        names = set(zf.namelist())
    prefix = Path(params.images_zip).stem  # train2017
    members = []
    for img in selected["images"]:
        member = f"{prefix}/{img['file_name']}"
        if member not in names:
            raise SpotdiffError(f"{img_zip}: image {member} listed in the annotations is missing from the zip")
        members.append(member)
    staging = out_dir / "_staging"
    extract_members(img_zip, staging, members, desc="extract images")
    (staging / prefix).rename(out_dir / "images")
    shutil.rmtree(staging, ignore_errors=True)
    return selected
