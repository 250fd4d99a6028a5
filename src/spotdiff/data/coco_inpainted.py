"""Reader and writer of the COCO-Inpainted on-disk layout (the authors' published test-set format) — one format for training and test.

Layout of a COCO-Inpainted folder (the authors' published `train/`, `test/{small,medium,large}/`, and
what our `inpaint` stage writes):

    images_and_masks/<idx>.png          the original image (RGB)
    inpainted/<idx>_mask<bits>.png      an inpainted version; <bits> says which annotations are removed
    metadata/<idx>.npy                  pickled object array of the image's COCO annotation dicts
                                        (segmentation polygons or RLE, bbox xywh, ...)
    list_of_indices.npy                 the item indices (int array)
    data_split.pkl                      (published sets only; not needed here)
    test_augmentations/{original,inpainted}/<idx>.params   (optional) fixed test-time augmentation:
                                        torch.save'd {"aff": {...}, "jit": {...}} of plain tensors

`<bits>`: the removed set written in binary, zero-padded to the number of annotations, `1` = removed,
annotation 0 is the leftmost (most significant) digit. An empty `<bits>` means all objects were
removed. The objects changed between two images of the same item are the XOR (symmetric difference)
of their removed sets; the original has none removed.

The inpainted image can be a few pixels larger than the original (the inpainter pads to a multiple
of 8); like the reference we resize it to the original's size when loading.

Use:
    ds = CocoInpainted("data/inpainted")
    for idx in ds.indices:
        original = ds.load_original(idx)                # H×W×3 uint8 RGB
        anns = ds.annotations(idx)                      # list of COCO annotation dicts
        masks = ds.annotation_masks(idx)                # N×H×W bool, N = len(anns)
        for version in ds.versions(idx):                # InpaintedVersion(idx, bits, removed, path)
            inpainted = ds.load_inpainted(version)      # resized to the original's size
            changed = changed_ids(frozenset(), version.removed)

Metadata is unpickled with `spotdiff.data.safe_pickle` (plain types only), never with pickle.load.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from spotdiff.data.safe_pickle import load_npy_plain
from spotdiff.errors import SpotdiffError
from spotdiff.fsutil import atomic_path, torch_save_atomic
from spotdiff.imageio import load_image, read_image_size, write_png

ORIGINALS_DIR = "images_and_masks"
INPAINTED_DIR = "inpainted"
METADATA_DIR = "metadata"
INDEX_FILE = "list_of_indices.npy"
TEST_AUG_DIR = "test_augmentations"
AUG_KINDS = ("original", "inpainted")

_INPAINTED_NAME = re.compile(r"^(\d+)_mask([01]*)\.png$")


# ---------------------------------------------------------------- <bits> <-> removed ids


def format_bits(removed: Iterable[int], num_annotations: int) -> str:
    """The `<bits>` string of a removed set: '1' = removed, annotation 0 leftmost; all removed -> ''."""
    removed = frozenset(int(i) for i in removed)
    bad = [i for i in removed if not 0 <= i < num_annotations]
    if bad:
        raise ValueError(f"annotation ids {sorted(bad)} out of range for {num_annotations} annotations")
    if num_annotations > 0 and len(removed) == num_annotations:
        return ""
    return "".join("1" if i in removed else "0" for i in range(num_annotations))


def parse_bits(bits: str, num_annotations: int) -> frozenset[int]:
    """The removed annotation ids of a `<bits>` string ('' = all removed).

    A string shorter than `num_annotations` is read as a binary integer (left-padded with zeros);
    a longer one, or one with other characters, is an error.
    """
    if bits == "":
        return frozenset(range(num_annotations))
    if set(bits) - {"0", "1"}:
        raise ValueError(f"bits {bits!r} must contain only 0 and 1")
    if len(bits) > num_annotations:
        raise ValueError(f"bits {bits!r} longer than the {num_annotations} annotations")
    bits = bits.rjust(num_annotations, "0")
    return frozenset(i for i, b in enumerate(bits) if b == "1")


def changed_ids(removed_a: Iterable[int], removed_b: Iterable[int]) -> frozenset[int]:
    """Objects that differ between two images of one item: the XOR of their removed sets.

    An object removed in both images is not a change (it would teach the model inpainting noise).
    """
    return frozenset(removed_a) ^ frozenset(removed_b)


# ---------------------------------------------------------------- image / mask helpers




def resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an RGB image to height×width (bilinear); returned unchanged when already that size."""
    import cv2

    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def segmentation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """H×W bool mask of one COCO segmentation (polygons, uncompressed or compressed RLE)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, (list, tuple)):
        polys = [list(map(float, p)) for p in segmentation if len(p) >= 6]
        if not polys:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segmentation, dict):
        counts = segmentation["counts"]
        if isinstance(counts, (list, tuple, np.ndarray)):
            rle = mask_utils.frPyObjects({"counts": [int(c) for c in counts],
                                          "size": [int(s) for s in segmentation["size"]]}, height, width)
        else:
            rle = {"counts": counts.encode("ascii") if isinstance(counts, str) else bytes(counts),
                   "size": [int(s) for s in segmentation["size"]]}
    else:
        raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")
    mask = mask_utils.decode(rle).astype(bool)
    if mask.shape != (height, width):
        import cv2

        mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
    return mask


def annotation_masks(annotations: Sequence[dict], height: int, width: int) -> np.ndarray:
    """N×H×W bool masks of a list of COCO annotation dicts (a bbox-only annotation fills its box)."""
    masks = np.zeros((len(annotations), height, width), dtype=bool)
    for i, ann in enumerate(annotations):
        segm = ann.get("segmentation")
        if segm is not None and len(segm) > 0:
            masks[i] = segmentation_mask(segm, height, width)
        elif "bbox" in ann:
            x, y, w, h = (float(v) for v in ann["bbox"])
            x1, y1 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
            x2, y2 = min(int(np.ceil(x + w)), width), min(int(np.ceil(y + h)), height)
            masks[i, y1:y2, x1:x2] = True
    return masks


# ---------------------------------------------------------------- reader


@dataclass(frozen=True)
class InpaintedVersion:
    """One inpainted image of item `idx`: `removed` are the annotation ids removed in it."""

    idx: int
    bits: str
    removed: frozenset
    path: Path


class CocoInpainted:
    """Read a COCO-Inpainted folder. `indices` come from `list_of_indices.npy`.

    A folder without `list_of_indices.npy` is refused: our `inpaint` stage writes that file last, so
    its absence means the run that produced the folder did not finish.
    """

    def __init__(self, root: str | Path, cache_mb: int = 256):
        """`cache_mb`: decoded images kept in memory (least recently used dropped first). Training
        reads each source image many times; decoding a PNG is ~1.4 ms of a ~15 ms pair. 0 = none."""
        self.root = Path(root)
        self._images: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._image_bytes = 0
        self._cache_limit = int(cache_mb) << 20
        self._sizes: dict[int, tuple[int, int]] = {}
        if not self.root.is_dir():
            raise SpotdiffError(f"{self.root}: COCO-Inpainted folder not found; run `spotdiff inpaint` "
                                "or point to the downloaded set")
        index_path = self.root / INDEX_FILE
        if not index_path.is_file():
            raise SpotdiffError(f"{index_path}: missing, so {self.root} is not a complete COCO-Inpainted "
                                "folder (an interrupted inpaint run?); rerun `spotdiff inpaint`")
        raw = load_npy_plain(index_path)
        self.indices: list[int] = [int(i) for i in np.asarray(raw).ravel()]
        self._versions: dict[int, list[InpaintedVersion]] | None = None
        self._ann_cache: dict[int, list[dict]] = {}

    def __len__(self) -> int:
        return len(self.indices)

    # -- paths
    def original_path(self, idx: int) -> Path:
        return self.root / ORIGINALS_DIR / f"{idx}.png"

    def metadata_path(self, idx: int) -> Path:
        return self.root / METADATA_DIR / f"{idx}.npy"

    def inpainted_path(self, idx: int, bits: str) -> Path:
        return self.root / INPAINTED_DIR / f"{idx}_mask{bits}.png"

    # -- annotations
    def annotations(self, idx: int) -> list[dict]:
        """The item's COCO annotation dicts in bit order (annotation i <-> bit i)."""
        if idx not in self._ann_cache:
            arr = load_npy_plain(self.metadata_path(idx))
            anns = [a for a in np.asarray(arr, dtype=object).ravel()]
            for a in anns:
                if not isinstance(a, dict):
                    raise SpotdiffError(f"{self.metadata_path(idx)}: expected annotation dicts, found "
                                        f"{type(a).__name__}; not a COCO-Inpainted metadata file")
            self._ann_cache[idx] = anns
        return self._ann_cache[idx]

    def annotation_masks(self, idx: int, height: int | None = None, width: int | None = None) -> np.ndarray:
        """N×H×W bool masks of the item's annotations at the original's size (or the size given)."""
        if height is None or width is None:
            height, width = self.image_size(idx)
        return annotation_masks(self.annotations(idx), height, width)

    def image_size(self, idx: int) -> tuple[int, int]:
        """(height, width) of the original image (read from the file header only)."""
        if idx not in self._sizes:
            width, height = read_image_size(self.original_path(idx))
            self._sizes[idx] = (int(height), int(width))
        return self._sizes[idx]

    def _read(self, path: Path) -> np.ndarray:
        """The decoded image at `path` (a copy: callers may paint on it), through the cache."""
        image = self._images.get(path)
        if image is not None:
            self._images.move_to_end(path)
            return image.copy()
        image = load_image(path)
        if image.nbytes <= self._cache_limit:
            self._images[path] = image
            self._image_bytes += image.nbytes
            while self._image_bytes > self._cache_limit:
                _, dropped = self._images.popitem(last=False)
                self._image_bytes -= dropped.nbytes
            return image.copy()
        return image

    # -- images
    def load_original(self, idx: int) -> np.ndarray:
        return self._read(self.original_path(idx))

    def versions(self, idx: int) -> list[InpaintedVersion]:
        """The inpainted versions of item `idx`, sorted by bits (a listing of `inpainted/` made once)."""
        if self._versions is None:
            self._versions = self._scan_versions()
        found = self._versions.get(int(idx), [])
        if not found:
            return []
        n = len(self.annotations(idx))
        out = []
        for bits, path in sorted(found):
            try:
                removed = parse_bits(bits, n)
            except ValueError as exc:
                raise SpotdiffError(f"{path}: {exc} (item has {n} annotations); the file name does not "
                                    "match its metadata") from None
            out.append(InpaintedVersion(int(idx), bits, removed, path))
        return out

    def _scan_versions(self) -> dict[int, list]:
        folder = self.root / INPAINTED_DIR
        table: dict[int, list] = {}
        if folder.is_dir():
            for path in folder.iterdir():
                m = _INPAINTED_NAME.match(path.name)
                if m:
                    table.setdefault(int(m.group(1)), []).append((m.group(2), path))
        return table

    def load_inpainted(self, version: InpaintedVersion, size: tuple[int, int] | None = None) -> np.ndarray:
        """The inpainted image, resized to `size` (height, width) or to the original's size."""
        image = self._read(version.path)
        height, width = size if size is not None else self.image_size(version.idx)
        return resize_to(image, height, width)

    def load_removed(self, idx: int, removed: Iterable[int]) -> np.ndarray:
        """The image of item `idx` with `removed` annotations removed (empty set: the original)."""
        removed = frozenset(removed)
        if not removed:
            return self.load_original(idx)
        for version in self.versions(idx):
            if version.removed == removed:
                return self.load_inpainted(version)
        raise SpotdiffError(f"{self.root}: item {idx} has no inpainted version removing {sorted(removed)}; "
                            "the manifest and the inpainted folder disagree — rerun `spotdiff inpaint` "
                            "and `spotdiff pairs`")

    # -- fixed test-time augmentation
    def test_augmentation(self, idx: int, kind: str) -> dict | None:
        """The stored `{"aff": {...}, "jit": {...}}` of item `idx` for `kind` in AUG_KINDS, or None."""
        if kind not in AUG_KINDS:
            raise ValueError(f"kind must be one of {AUG_KINDS}")
        path = self.root / TEST_AUG_DIR / kind / f"{idx}.params"
        if not path.is_file():
            return None
        import torch

        try:
            params = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise SpotdiffError(f"{path}: not a plain torch.save'd dict of tensors ({type(exc).__name__}); "
                                "re-download or regenerate the test set") from None
        if not isinstance(params, dict):
            raise SpotdiffError(f"{path}: expected a dict {{'aff': ..., 'jit': ...}}; "
                                f"got {type(params).__name__}")
        return params


# ---------------------------------------------------------------- writer


def _plain(value: Any) -> Any:
    """Convert numpy scalars/arrays inside an annotation to Python types, so metadata stays plain."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool, bytes)) or value is None:
        return value
    raise TypeError(f"annotation value of type {type(value).__name__} is not plain")


class CocoInpaintedWriter:
    """Write a COCO-Inpainted folder file by file, each file atomically.

    Per item, write the original and the inpainted versions first and the metadata LAST: a metadata
    file therefore marks a complete item. `write_index` (the whole set's completion marker) goes last.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        for sub in (ORIGINALS_DIR, INPAINTED_DIR, METADATA_DIR):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def original_path(self, idx: int) -> Path:
        return self.root / ORIGINALS_DIR / f"{idx}.png"

    def inpainted_path(self, idx: int, removed: Iterable[int], num_annotations: int) -> Path:
        return self.root / INPAINTED_DIR / f"{idx}_mask{format_bits(removed, num_annotations)}.png"

    def metadata_path(self, idx: int) -> Path:
        return self.root / METADATA_DIR / f"{idx}.npy"

    def write_original(self, idx: int, image: np.ndarray) -> Path:
        path = self.original_path(idx)
        write_png(path, image)
        return path

    def write_inpainted(self, idx: int, removed: Iterable[int], num_annotations: int,
                        image: np.ndarray) -> Path:
        path = self.inpainted_path(idx, removed, num_annotations)
        write_png(path, image)
        return path

    def write_metadata(self, idx: int, annotations: Sequence[dict]) -> Path:
        arr = np.empty(len(annotations), dtype=object)
        for i, ann in enumerate(annotations):
            arr[i] = _plain(ann)
        path = self.metadata_path(idx)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=True)
        return path

    def write_index(self, indices: Sequence[int]) -> Path:
        path = self.root / INDEX_FILE
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(list(indices), dtype=np.int64), allow_pickle=False)
        return path

    def write_test_augmentation(self, idx: int, kind: str, params: dict) -> Path:
        """Store `{"aff": {...}, "jit": {...}}` (plain tensors) for item `idx`, `kind` in AUG_KINDS."""
        if kind not in AUG_KINDS:
            raise ValueError(f"kind must be one of {AUG_KINDS}")
        path = self.root / TEST_AUG_DIR / kind / f"{idx}.params"
        torch_save_atomic(path, params)
        return path
