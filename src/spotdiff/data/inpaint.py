"""Inpainting objects away: from a COCO instance dataset to the COCO-Inpainted layout (resumable).

For every source image with at least one (non-crowd) annotation, n ∈ [1, max_versions] inpainted
versions are made, each removing a different non-empty subset of its objects: the union of the
removed objects' masks, dilated by `dilate_px`, is filled by an inpainting backend. Everything about
an image (n, the subsets) is drawn from `numpy.random.default_rng([seed, image_id])`, so it does not
depend on which other images exist or on the order of work — which is what makes resuming exact.

Backends, one interface (`Inpainter.inpaint(images, masks) -> images`):
- `opencv` (default): `cv2.inpaint` (Telea or Navier–Stokes). Pixels outside the mask are untouched.
- `lama`: a TorchScript LaMa (`big-lama.pt`), `model(image B×3×H×W [0,1], mask B×1×H×W {0,1})`, H and
  W padded (symmetric) to a multiple of 8 and the result cropped back; batched; CUDA when available.
  The result is composited (`mask ? lama : original`) so that only the masked pixels change, like
  the opencv backend: a difference outside the removed objects would be unlabelled "change".

Resuming and what a killed run looks like:
- Every file is written atomically (temporary sibling + rename), so no file is ever half-written.
- Per image, the original and the inpainted versions are written first and `metadata/<idx>.npy` last:
  an image is complete when its metadata and all its planned files exist. A rerun skips complete
  images and writes only the missing files of the others.
- `list_of_indices.npy` — the file every reader needs — is deleted when a run starts and written
  only when the run finishes, so a killed run leaves a folder that `CocoInpainted` refuses ("not a
  complete COCO-Inpainted folder"). DVC records the output's hash in dvc.lock only after the command
  exits 0, so it never trusts a killed run either; `dvc repro` reruns the stage. For the rerun to
  *resume* rather than start over, the stage's output must be declared `persist: true` in dvc.yaml
  (otherwise DVC deletes the folder before running the command, which is correct but slower).
- `.inpaint-run.json` records a fingerprint of the params and the source annotations. When it does
  not match (params or source changed), the folder's previous content is discarded first, so a
  resume never mixes files made under different settings. Leftover temporary files of a killed
  run and files no longer planned are removed at the end.

Scale-out (docs/SCALE-OUT.md): inside a `torch.distributed` launch every process inpaints the chunks
of `batch_size` images that are its own (chunk c: rank c % WORLD_SIZE), each image's files still
written as above, so each shard resumes on its own; rank 0 alone prepares the folder and, once all
have finished, writes `list_of_indices.npy`. The files are the same bytes as one process writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from tqdm import tqdm

from spotdiff.data.coco_inpainted import (
    INDEX_FILE,
    INPAINTED_DIR,
    METADATA_DIR,
    ORIGINALS_DIR,
    CocoInpaintedWriter,
    annotation_masks,
)
from spotdiff.distributed import Shard, joined
from spotdiff.errors import SpotdiffError
from spotdiff.fsutil import write_json_atomic
from spotdiff.imageio import load_image, write_png
from spotdiff.params import InpaintParams

RUN_FILE = ".inpaint-run.json"
LAMA_MULTIPLE = 8


# ---------------------------------------------------------------- backends


class Inpainter(Protocol):
    """Fill the True pixels of each mask. images: H×W×3 uint8 RGB; masks: H×W bool (same H×W)."""

    def inpaint(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class OpenCVInpainter:
    """`cv2.inpaint` (Telea or Navier–Stokes), run on a thread pool (cv2 releases the GIL)."""

    def __init__(self, method: str = "telea", radius: int = 5, workers: int | None = None):
        import cv2

        self._flag = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}[method]
        self.radius = radius
        self.workers = workers or max(1, min(8, os.cpu_count() or 1))

    def _one(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import cv2

        out = cv2.inpaint(np.ascontiguousarray(image), mask.astype(np.uint8) * 255, self.radius, self._flag)
        return out

    def inpaint(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(images) <= 1 or self.workers == 1:
            return [self._one(i, m) for i, m in zip(images, masks)]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self._one, images, masks))


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SpotdiffError("params.yaml: inpaint.device is cuda but no CUDA device is available; "
                            "set it to auto or cpu")
    return device


def check_lama_checkpoint(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    if not path.is_file():
        raise SpotdiffError(
            f"{path}: LaMa TorchScript file not found; put big-lama.pt there (published md5 "
            "e3aa4aaa15225a33ec84f9f4bc47e500), set inpaint.lama_checkpoint, or use "
            "inpaint.backend: opencv")
    return path


class LamaInpainter:
    """A TorchScript LaMa: `model(image B×3×H×W [0,1], mask B×1×H×W {0,1}) -> B×3×H×W [0,1]`."""

    def __init__(self, checkpoint: str | Path, device: str = "auto", batch_size: int = 4):
        import torch

        path = check_lama_checkpoint(checkpoint)
        self.device = resolve_device(device)
        try:
            with warnings.catch_warnings():  # torch 2.x deprecates TorchScript; big-lama.pt is one
                warnings.simplefilter("ignore", FutureWarning)
                self.model = torch.jit.load(str(path), map_location=self.device)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SpotdiffError(f"{path}: not a TorchScript model ({first}); export LaMa with "
                                "torch.jit.save or use inpaint.backend: opencv") from None
        self.model.eval()
        self.batch_size = batch_size
        self.path = path

    def _batch(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        sizes = [im.shape[:2] for im in images]
        ph = -(-max(h for h, _ in sizes) // LAMA_MULTIPLE) * LAMA_MULTIPLE
        pw = -(-max(w for _, w in sizes) // LAMA_MULTIPLE) * LAMA_MULTIPLE
        img_b = np.stack([np.pad(im, ((0, ph - h), (0, pw - w), (0, 0)), mode="symmetric")
                          for im, (h, w) in zip(images, sizes)])
        mask_b = np.stack([np.pad(m.astype(np.float32), ((0, ph - h), (0, pw - w)))
                           for m, (h, w) in zip(masks, sizes)])
        image_t = torch.from_numpy(img_b).permute(0, 3, 1, 2).float().div(255).to(self.device)
        mask_t = torch.from_numpy(mask_b)[:, None].to(self.device)
        with torch.inference_mode():
            result = self.model(image_t, mask_t)
        if not isinstance(result, torch.Tensor) or tuple(result.shape) != tuple(image_t.shape):
            got = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
            raise SpotdiffError(f"{self.path}: the model returned {got} for an input of "
                                f"{tuple(image_t.shape)}; expected the same B×3×H×W — not a LaMa model")
        result = (result.float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        out = []
        for k, (h, w) in enumerate(sizes):
            filled = result[k, :h, :w]
            keep = ~masks[k].astype(bool)
            composed = filled.copy()
            composed[keep] = images[k][keep]
            out.append(composed)
        return out

    def inpaint(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            out.extend(self._batch(images[start:stop], masks[start:stop]))
        return out


def make_inpainter(params: InpaintParams) -> Inpainter:
    if params.backend == "lama":
        return LamaInpainter(params.lama_checkpoint, params.device, params.batch_size)
    return OpenCVInpainter(params.opencv_method, params.opencv_radius)


# ---------------------------------------------------------------- planning


def plan_removals(num_annotations: int, max_versions: int, rng: np.random.Generator) -> list[frozenset]:
    """n ∈ [1, max_versions] distinct non-empty subsets of range(num_annotations) (fewer if not enough)."""
    if num_annotations <= 0:
        return []
    n_subsets = 2 ** num_annotations - 1 if num_annotations < 30 else 1 << 30
    n = min(int(rng.integers(1, max_versions + 1)), n_subsets)
    chosen: list[frozenset] = []
    while len(chosen) < n:
        k = int(rng.integers(1, num_annotations + 1))
        subset = frozenset(int(i) for i in rng.choice(num_annotations, size=k, replace=False))
        if subset not in chosen:
            chosen.append(subset)
    return chosen


def dilate(mask: np.ndarray, dilate_px: int) -> np.ndarray:
    import cv2

    if dilate_px <= 0:
        return mask.astype(bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate_px + 1, 2 * dilate_px + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


@dataclass
class SourceImage:
    idx: int
    path: Path
    height: int
    width: int
    annotations: list


def read_source(source: str | Path) -> list[SourceImage]:
    """Images of a COCO instances dataset (`instances.json` + `images/`) with their non-crowd annotations."""
    source = Path(source)
    inst = source / "instances.json"
    if not inst.is_file():
        raise SpotdiffError(f"{inst}: not found; run `spotdiff data` first or pass --source")
    try:
        coco = json.loads(inst.read_text())
        by_image: dict[int, list] = {}
        for ann in coco["annotations"]:
            if not ann.get("iscrowd", 0):
                by_image.setdefault(int(ann["image_id"]), []).append(ann)
        images = [SourceImage(int(im["id"]), source / "images" / im["file_name"], int(im["height"]),
                              int(im["width"]), by_image.get(int(im["id"]), []))
                  for im in coco["images"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise SpotdiffError(f"{inst}: not a COCO instances file ({type(exc).__name__}: {exc}); "
                            "regenerate it with `spotdiff data`") from None
    return sorted(images, key=lambda s: s.idx)


def _fingerprint(params: InpaintParams, source: Path) -> dict:
    digest = hashlib.sha256((source / "instances.json").read_bytes()).hexdigest()
    keys = params.model_dump()
    keys.pop("batch_size", None)  # does not change the output
    keys.pop("device", None)
    keys.pop("devices", None)  # nor does the number of processes (docs/SCALE-OUT.md)
    keys.pop("num_nodes", None)
    return {"format": "spotdiff-inpaint/1", "params": keys, "instances_sha256": digest}


def _prepare_folder(out: Path, fingerprint: dict) -> None:
    """Keep a previous run's files only when made with the same params and source; mark 'in progress'."""
    run_file = out / RUN_FILE
    previous = None
    if run_file.is_file():
        try:
            previous = json.loads(run_file.read_text())
        except ValueError:
            previous = None
    if previous != fingerprint and out.exists():
        for sub in (ORIGINALS_DIR, INPAINTED_DIR, METADATA_DIR):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX_FILE).unlink(missing_ok=True)  # absent until this run finishes
    write_json_atomic(run_file, fingerprint)


def _remove_stale(out: Path, expected: set[Path]) -> int:
    """Delete temporary leftovers of killed runs and files this plan does not produce."""
    removed = 0
    for sub in (ORIGINALS_DIR, INPAINTED_DIR, METADATA_DIR):
        folder = out / sub
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path not in expected:
                path.unlink()
                removed += 1
    return removed


# ---------------------------------------------------------------- the stage


@dataclass
class InpaintSummary:
    images: int
    versions: int
    images_done_now: int
    versions_done_now: int
    skipped_images: int
    stale_removed: int
    seconds: float
    processes: int = 1


def _inpaint_chunk(group: list[tuple[SourceImage, list[frozenset]]], writer: CocoInpaintedWriter,
                   inpainter: Inpainter, params: InpaintParams) -> int:
    """Write the missing files of the images of one chunk (metadata last); returns the versions made."""
    jobs_img, jobs_mask, jobs_dest = [], [], []
    for img, plan in group:
        image = load_image(img.path)
        if image.shape[:2] != (img.height, img.width):
            raise SpotdiffError(f"{img.path}: size {image.shape[1]}x{image.shape[0]} differs from "
                                f"instances.json ({img.width}x{img.height}); regenerate the source")
        if not writer.original_path(img.idx).is_file():
            writer.write_original(img.idx, image)
        masks = annotation_masks(img.annotations, img.height, img.width)
        n = len(img.annotations)
        for removed in plan:
            dest = writer.inpainted_path(img.idx, removed, n)
            if dest.is_file():
                continue
            hole = dilate(masks[sorted(removed)].any(axis=0), params.dilate_px)
            jobs_img.append(image)
            jobs_mask.append(hole)
            jobs_dest.append(dest)
    results = inpainter.inpaint(jobs_img, jobs_mask) if jobs_img else []
    for dest, result in zip(jobs_dest, results):
        write_png(dest, result)
    for img, _plan in group:  # metadata last: it marks the image complete
        writer.write_metadata(img.idx, img.annotations)
    return len(results)


def run_inpaint(params: InpaintParams, source: str | Path, out: str | Path,
                inpainter: Inpainter | None = None, stop_after: int | None = None) -> InpaintSummary:
    """Write the COCO-Inpainted layout for `source` into `out`, resuming what a previous run left.

    Inside a `torch.distributed` launch (`spotdiff.distributed`), each process does its share: the
    images are cut into chunks of `batch_size` in index order (as one process cuts them, so a batch
    holds the same images) and chunk c is rank c % WORLD_SIZE's; rank 0 prepares the folder first
    and, after every rank has finished, removes stale files and writes `list_of_indices.npy`. The
    folder must be on a file system every process sees. Returns this process's counts (rank 0: the
    whole launch's).

    `stop_after` (tests only) stops after that many images were worked on, like a killed run: the
    folder is left without `list_of_indices.npy`.
    """
    with joined() as shard:
        return _run_inpaint(params, Path(source), Path(out), inpainter, stop_after, shard)


def _run_inpaint(params: InpaintParams, source: Path, out: Path, inpainter: Inpainter | None,
                 stop_after: int | None, shard: Shard) -> InpaintSummary:
    import time

    start = time.perf_counter()
    images = read_source(source)
    if shard.is_main:
        _prepare_folder(out, _fingerprint(params, source))
    shard.barrier()  # the folder is ready (a stale one emptied) before any process looks into it
    if inpainter is None:
        if params.backend == "lama" and shard.distributed and params.device in ("auto", "cuda"):
            import torch  # every process on its own GPU (`joined` made it the current one)

            if torch.cuda.is_available():
                params = params.model_copy(update={"device": f"cuda:{torch.cuda.current_device()}"})
        inpainter = make_inpainter(params)
    writer = CocoInpaintedWriter(out)

    expected: set[Path] = set()
    planned: list[tuple[SourceImage, list[frozenset]]] = []
    n_versions = 0
    for img in images:
        n = len(img.annotations)
        if n == 0:
            continue  # nothing to remove: not a training item
        plan = plan_removals(n, params.max_versions, np.random.default_rng([params.seed, img.idx]))
        expected.update([writer.original_path(img.idx), writer.metadata_path(img.idx)])
        expected.update(writer.inpainted_path(img.idx, r, n) for r in plan)
        planned.append((img, plan))
        n_versions += len(plan)
    indices = [img.idx for img, _ in planned]

    def complete(img: SourceImage, plan: list[frozenset]) -> bool:
        files = [writer.original_path(img.idx), writer.metadata_path(img.idx)]
        files += [writer.inpainted_path(img.idx, r, len(img.annotations)) for r in plan]
        return all(p.is_file() for p in files)

    chunk = params.batch_size
    chunks = [planned[i:i + chunk] for i in range(0, len(planned), chunk)]
    mine = [[item for item in group if not complete(*item)]
            for c, group in enumerate(chunks) if shard.owns(c)]
    mine = [group for group in mine if group]
    todo = sum(len(group) for group in mine)
    skipped = sum(len(group) for c, group in enumerate(chunks) if shard.owns(c)) - todo

    done_images = done_versions = 0
    bar = tqdm(total=todo, desc=f"inpaint{shard.tag()}", unit="img")
    try:
        for group in mine:
            if stop_after is not None and done_images >= stop_after:
                return InpaintSummary(len(indices), n_versions, done_images, done_versions, skipped, 0,
                                      time.perf_counter() - start, shard.world_size)
            if stop_after is not None:
                group = group[:stop_after - done_images]
            done_versions += _inpaint_chunk(group, writer, inpainter, params)
            done_images += len(group)
            bar.update(len(group))
    finally:
        bar.close()

    counts = shard.gather((done_images, done_versions, skipped))  # also: every process has finished
    stale = 0
    if shard.is_main:
        assert counts is not None
        done_images, done_versions, skipped = (sum(c[k] for c in counts) for k in range(3))
        stale = _remove_stale(out, expected)
        writer.write_index(indices)
    return InpaintSummary(len(indices), n_versions, done_images, done_versions, skipped, stale,
                          time.perf_counter() - start, shard.world_size)


__all__ = ["Inpainter", "OpenCVInpainter", "LamaInpainter", "make_inpainter", "plan_removals", "dilate",
           "read_source", "run_inpaint", "InpaintSummary"]
