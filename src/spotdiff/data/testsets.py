"""Readers of the four official test sets in their published on-disk formats, and download.

Every reader yields `TestPair`s (both images uint8 RGB, each with its own N×4 xyxy boxes in its own
pixels, x2/y2 exclusive) and says whether the folder is one of our offline stand-ins (`is_standin`:
the folder holds `STANDIN.txt`, written by `spotdiff.data.standins`).

- COCO-Inpainted `test/{small,medium,large}/` -> `CocoInpaintedTest` (layout via
  `spotdiff.data.coco_inpainted`): the original vs its one inpainted version; the changed objects
  are the removed ones. With `test_augmentations/{original,inpainted}/<idx>.params` both images are
  jittered and warped by those stored kornia parameters at their own resolution, and each box is
  the tight box of its object's warped mask, kept only where the other image shows it too (the
  same rule as training, `spotdiff.data.transforms`).
- Synthtext-Change -> `SynthtextChange`: `synthtext-change.h5` (or the reference's `custom.h5`),
  `data/<key>` the image with text, `attrs["wordBB"]` 2×4×N corners (box = min/max, clipped to the
  image; boxes empty after clipping are dropped); the background `bg_img/<stem>.*` with the key's
  stem (text before the first dot), resized to the text image's size. Same boxes in both.
- VIRAT-STD -> `ViratStd`: `<id>.png`, `<id>_2.png`, `annotations.npy` = pickled dict
  {id: [[x1, y1, x2, y2], ...]}, read with the restricted unpickler
  (`spotdiff.data.safe_pickle.load_npy_plain`, never `np.load(allow_pickle=True)`). Same boxes in both.
- Kubric-Change -> `KubricChange`: `<idx>_0.png`, `<idx>_1.png`, `mask_<idx>_00000.png`,
  `mask_<idx>_00001.png`; each image's boxes are the 4-connected components of its own mask
  (non-zero pixels), as the reference did with `scipy.ndimage.label`.

No-change pairs (`TestPair.no_change`), in each format's own terms: a Synthtext-Change item with no
words (`wordBB` 2×4×0), a VIRAT-STD id with an empty box list, a Kubric-Change item whose two masks
are empty, a COCO-Inpainted item whose inpainted file removes nothing (`<bits>` all zeros, e.g.
`7_mask000.png`: the second image is the original under its own stored augmentation). Our stand-ins
hold such pairs; in an official set any item so written would count as one too. The evaluation
counts false alarms on them and leaves them out of AP.

A malformed set raises `SpotdiffError` naming the file. `open_testset(path)` recognises the kind by
layout; `find_testsets(root)` finds every set under a folder (e.g. an extracted official download).

`download(base_url, archives, dest)` fetches archives listed in `<base_url>/SHA512SUMS`, verifies
each against its SHA512, and extracts zip / tar(.gz) archives refusing absolute paths, `..`, links
and special files.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Sequence

import numpy as np

from spotdiff.boxes import box_areas, clip_boxes, mask_to_box
from spotdiff.data.coco_inpainted import CocoInpainted, resize_to
from spotdiff.data.safe_pickle import load_npy_plain
from spotdiff.data.transforms import PairAugmenter, image_to_tensor
from spotdiff.download import download as fetch
from spotdiff.download import extract_archive
from spotdiff.errors import SpotdiffError
from spotdiff.fsutil import file_digest
from spotdiff.imageio import load_image
from spotdiff.params import AugmentParams

STANDIN_MARKER = "STANDIN.txt"
SYNTHTEXT_H5_NAMES = ("synthtext-change.h5", "custom.h5")
COCO_SUBSETS = ("small", "medium", "large")
KINDS = ("coco_inpainted", "synthtext_change", "virat_std", "kubric_change")


@dataclass
class TestPair:
    """One test pair: images H×W×3 uint8 RGB; boxes N×4 float64 xyxy in each image's own pixels."""

    __test__ = False  # not a pytest test class

    image_a: np.ndarray
    image_b: np.ndarray
    boxes_a: np.ndarray
    boxes_b: np.ndarray
    pair_id: str
    # The set's format says nothing changed (no words, an empty box list, empty masks, nothing
    # removed): evaluation counts false alarms on it and leaves it out of AP.
    no_change: bool = False


def _boxes(rows, source: str) -> np.ndarray:
    try:
        arr = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        raise SpotdiffError(f"{source}: boxes are not numbers; the annotation file is damaged") from None
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4 or not np.isfinite(arr).all():
        raise SpotdiffError(f"{source}: expected a list of [x1, y1, x2, y2] boxes, got shape {arr.shape}; "
                            "the annotation file is damaged")
    return arr


def _clip_nonempty(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    boxes = clip_boxes(boxes, width, height)
    return boxes[box_areas(boxes) > 0]


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise SpotdiffError(f"{path}: mask not found; the Kubric-Change folder is incomplete")
    try:
        with Image.open(path) as img:
            arr = np.array(img)
    except (OSError, ValueError):
        raise SpotdiffError(f"{path}: not a readable mask image; re-download the set") from None
    return arr.any(axis=2) if arr.ndim == 3 else arr != 0


def mask_components_to_boxes(mask: np.ndarray) -> np.ndarray:
    """Boxes (xyxy, exclusive) of the 4-connected components of a boolean mask."""
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    out = []
    for sl in ndimage.find_objects(labels):
        if sl is not None:
            out.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


class TestSet:
    """Common interface: `len`, indexing and iteration yield `TestPair`; `name`, `kind`, `is_standin`."""

    __test__ = False
    kind = ""

    def __init__(self, root: str | Path, name: str | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise SpotdiffError(f"{self.root}: test set folder not found; run `spotdiff testsets` or "
                                "check the path")
        self.name = name or self.kind
        self.is_standin = (self.root / STANDIN_MARKER).is_file()

    @property
    def display_name(self) -> str:
        return f"{self.name} (stand-in)" if self.is_standin else self.name

    def __len__(self) -> int:
        return len(self.pair_ids)

    def __getitem__(self, i: int) -> TestPair:
        raise NotImplementedError

    def __iter__(self) -> Iterator[TestPair]:
        for i in range(len(self)):
            yield self[i]

    pair_ids: list[str]


# ---------------------------------------------------------------- Synthtext-Change


class SynthtextChange(TestSet):
    kind = "synthtext_change"

    def __init__(self, root: str | Path, name: str | None = None):
        super().__init__(root, name)
        found = [self.root / n for n in SYNTHTEXT_H5_NAMES if (self.root / n).is_file()]
        if not found:
            raise SpotdiffError(f"{self.root / SYNTHTEXT_H5_NAMES[0]}: not found (nor custom.h5); "
                                "not a Synthtext-Change folder")
        self.h5_path = found[0]
        self.bg_dir = self.root / "bg_img"
        if not self.bg_dir.is_dir():
            raise SpotdiffError(f"{self.bg_dir}: background folder not found; the Synthtext-Change set is "
                                "incomplete — re-download it")
        import h5py

        try:
            with h5py.File(self.h5_path, "r") as f:
                if "data" not in f or not isinstance(f["data"], h5py.Group):
                    raise SpotdiffError(f"{self.h5_path}: no group 'data'; not a Synthtext-Change HDF5 file")
                self.pair_ids = sorted(f["data"].keys())
        except OSError as exc:
            raise SpotdiffError(f"{self.h5_path}: not a readable HDF5 file ({exc}); re-download it") from None
        stems: dict[str, Path] = {}
        for p in sorted(self.bg_dir.iterdir()):
            stems.setdefault(p.name.split(".")[0], p)
        self._bg = {}
        for key in self.pair_ids:
            stem = key.split(".")[0]
            if stem not in stems:
                raise SpotdiffError(f"{self.bg_dir}: no background image named {stem}.* for HDF5 key "
                                    f"data/{key} in {self.h5_path}; the set is incomplete")
            self._bg[key] = stems[stem]

    def __getitem__(self, i: int) -> TestPair:
        import h5py

        key = self.pair_ids[i]
        where = f"{self.h5_path} data/{key}"
        try:
            with h5py.File(self.h5_path, "r") as f:
                ds = f["data"][key]
                image_b = np.asarray(ds[...])
                if "wordBB" not in ds.attrs:
                    raise SpotdiffError(f"{where}: no attrs['wordBB']; not a Synthtext-Change item")
                word_bb = np.asarray(ds.attrs["wordBB"], dtype=np.float64)
        except OSError as exc:
            raise SpotdiffError(f"{self.h5_path}: cannot read data/{key} ({exc}); re-download it") from None
        if image_b.dtype != np.uint8 or image_b.ndim != 3 or image_b.shape[2] != 3:
            raise SpotdiffError(f"{where}: expected an H×W×3 uint8 image, got {image_b.dtype} "
                                f"{image_b.shape}")
        if word_bb.ndim == 2:
            word_bb = word_bb[..., None]
        if word_bb.ndim != 3 or word_bb.shape[:2] != (2, 4):
            raise SpotdiffError(f"{where}: attrs['wordBB'] must be 2×4×N corners, got {word_bb.shape}")
        h, w = image_b.shape[:2]
        xs, ys = word_bb[0], word_bb[1]  # 4×N each
        boxes = np.stack([xs.min(0), ys.min(0), xs.max(0), ys.max(0)], axis=1)
        boxes = _clip_nonempty(_boxes(boxes, where), w, h)
        image_a = resize_to(load_image(self._bg[key]), h, w)
        return TestPair(image_a, image_b, boxes, boxes.copy(), key, no_change=word_bb.shape[2] == 0)


# ---------------------------------------------------------------- VIRAT-STD


class ViratStd(TestSet):
    kind = "virat_std"

    def __init__(self, root: str | Path, name: str | None = None):
        super().__init__(root, name)

        path = self.root / "annotations.npy"
        if not path.is_file():
            raise SpotdiffError(f"{path}: not found; not a VIRAT-STD folder")
        # The published file is a pickled dict: restricted unpickler, plain types only.
        raw = load_npy_plain(path)
        obj = raw.item() if isinstance(raw, np.ndarray) and raw.shape == () else raw
        if not isinstance(obj, dict):
            raise SpotdiffError(f"{path}: expected a pickled dict {{id: [[x1, y1, x2, y2], ...]}}, got "
                                f"{type(obj).__name__}; not a VIRAT-STD annotation file")
        self.annotations_path = path
        self.pair_ids = [str(k) for k in obj]
        self._boxes = {str(k): _boxes(v, f"{path} [{k!r}]") for k, v in obj.items()}

    def __getitem__(self, i: int) -> TestPair:
        pid = self.pair_ids[i]
        image_a = load_image(self.root / f"{pid}.png")
        image_b = load_image(self.root / f"{pid}_2.png")
        boxes = self._boxes[pid]
        return TestPair(image_a, image_b, boxes.copy(), boxes.copy(), pid, no_change=len(boxes) == 0)


# ---------------------------------------------------------------- Kubric-Change

_KUBRIC = re.compile(r"^(?:(?P<i>.+)_(?P<k>[01])|mask_(?P<m>.+)_(?P<mk>0000[01]))\.png$")


class KubricChange(TestSet):
    kind = "kubric_change"

    def __init__(self, root: str | Path, name: str | None = None):
        super().__init__(root, name)
        seen: dict[str, set] = {}
        for p in self.root.iterdir():
            m = _KUBRIC.match(p.name)
            if not m:
                continue
            if m.group("i") is not None and not m.group("i").startswith("mask_"):
                seen.setdefault(m.group("i"), set()).add(f"img{m.group('k')}")
            elif m.group("m") is not None:
                seen.setdefault(m.group("m"), set()).add(f"mask{int(m.group('mk'))}")
        if not seen:
            raise SpotdiffError(f"{self.root}: no <idx>_0.png / mask_<idx>_00000.png files; not a "
                                "Kubric-Change folder")
        need = {"img0": "{}_0.png", "img1": "{}_1.png", "mask0": "mask_{}_00000.png",
                "mask1": "mask_{}_00001.png"}
        for idx, have in seen.items():
            missing = sorted(set(need) - have)
            if missing:
                raise SpotdiffError(f"{self.root / need[missing[0]].format(idx)}: missing (item {idx} is "
                                    "incomplete); re-download the Kubric-Change set")
        self.pair_ids = sorted(seen, key=lambda s: (0, int(s), s) if s.isdigit() else (1, 0, s))

    def __getitem__(self, i: int) -> TestPair:
        idx = self.pair_ids[i]
        images, boxes, empty = [], [], True
        for k in (0, 1):
            image = load_image(self.root / f"{idx}_{k}.png")
            mask_path = self.root / f"mask_{idx}_0000{k}.png"
            mask = _read_mask(mask_path)
            if mask.shape != image.shape[:2]:
                raise SpotdiffError(f"{mask_path}: mask is {mask.shape[1]}×{mask.shape[0]} but its image is "
                                    f"{image.shape[1]}×{image.shape[0]}; the set is damaged")
            images.append(image)
            boxes.append(mask_components_to_boxes(mask))
            empty = empty and not mask.any()
        return TestPair(images[0], images[1], boxes[0], boxes[1], idx, no_change=empty)


# ---------------------------------------------------------------- COCO-Inpainted (test subsets)


def _compat_params(params: dict | None) -> dict | None:
    """Normalise stored kornia parameter dicts across kornia versions: older releases (as used for the
    published sets) named the affine shears `sx`/`sy` and may lack `batch_prob`."""
    if params is None:
        return None
    import torch

    out = {}
    for part in ("aff", "jit"):
        d = dict(params.get(part) or {})
        if part == "aff":
            for old, new in (("sx", "shear_x"), ("sy", "shear_y")):
                if old in d and new not in d:
                    d[new] = d.pop(old)
        if d and "batch_prob" not in d:
            first = next(iter(d.values()))
            n = first.shape[0] if isinstance(first, torch.Tensor) and first.ndim else 1
            d["batch_prob"] = torch.ones(n)
        out[part] = d
    return out


class CocoInpaintedTest(TestSet):
    kind = "coco_inpainted"

    def __init__(self, root: str | Path, name: str | None = None, apply_augmentation: bool = True):
        super().__init__(root, name)

        self.dataset = CocoInpainted(self.root)
        self.apply_augmentation = apply_augmentation
        self.pair_ids = [str(i) for i in self.dataset.indices]
        self._augmenter = None

    def _aug(self):
        if self._augmenter is None:
            # Only kornia's flags (border padding, align_corners) matter when replaying stored params.
            self._augmenter = PairAugmenter(AugmentParams(), image_size=256)
        return self._augmenter

    def __getitem__(self, i: int) -> TestPair:
        ds = self.dataset
        idx = ds.indices[i]
        versions = ds.versions(idx)
        if len(versions) != 1:
            raise SpotdiffError(f"{ds.root / 'inpainted'}: item {idx} has {len(versions)} inpainted images "
                                "(a test item has exactly one); not a COCO-Inpainted test folder")
        version = versions[0]
        image_a = ds.load_original(idx)
        image_b = ds.load_inpainted(version)
        h, w = image_a.shape[:2]
        masks = ds.annotation_masks(idx, h, w)[sorted(version.removed)]
        params = tuple(_compat_params(ds.test_augmentation(idx, kind)) for kind in ("original", "inpainted"))
        if self.apply_augmentation and params[0] is not None and params[1] is not None:
            image_a, image_b, boxes_a, boxes_b = self._replay(image_a, image_b, masks, params, idx)
        else:
            found = [mask_to_box(m) for m in masks]
            boxes_a = np.asarray([b for b in found if b is not None], dtype=np.float64).reshape(-1, 4)
            boxes_b = boxes_a.copy()
        return TestPair(image_a, image_b, boxes_a, boxes_b, str(idx), no_change=not version.removed)

    def _replay(self, image_a, image_b, masks, params, idx):
        import torch

        aug = self._aug()
        h, w = image_a.shape[:2]
        try:
            ta, ma = aug.apply_image(image_to_tensor(image_a), params[0])
            tb, mb = aug.apply_image(image_to_tensor(image_b), params[1])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            aug_dir = self.root / "test_augmentations"
            raise SpotdiffError(f"{aug_dir}/{{original,inpainted}}/{idx}.params: cannot replay the stored "
                                f"augmentation ({type(exc).__name__}: {exc}); not kornia RandomAffine/"
                                f"ColorJitter parameters for a {w}×{h} image") from None
        ones = torch.ones(1, h, w, dtype=torch.bool)
        b_in_a = aug.warp_masks(ones, ma @ torch.linalg.inv(mb))[0]
        a_in_b = aug.warp_masks(ones, mb @ torch.linalg.inv(ma))[0]
        mt = torch.from_numpy(np.ascontiguousarray(masks))
        masks_a = aug.warp_masks(mt, ma) & b_in_a
        masks_b = aug.warp_masks(mt, mb) & a_in_b
        boxes_a, boxes_b = [], []
        for k in range(masks.shape[0]):
            box_a, box_b = mask_to_box(masks_a[k].numpy()), mask_to_box(masks_b[k].numpy())
            if box_a is not None and box_b is not None:
                boxes_a.append(box_a)
                boxes_b.append(box_b)

        def to_uint8(t):
            return (t[0].permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)

        return (to_uint8(ta), to_uint8(tb), np.asarray(boxes_a, np.float64).reshape(-1, 4),
                np.asarray(boxes_b, np.float64).reshape(-1, 4))


# ---------------------------------------------------------------- discovery


def detect_kind(root: str | Path) -> str | None:
    """The test-set kind of a folder from its layout, or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    if (root / "list_of_indices.npy").is_file() and (root / "images_and_masks").is_dir():
        return "coco_inpainted"
    if (root / "bg_img").is_dir() and any((root / n).is_file() for n in SYNTHTEXT_H5_NAMES):
        return "synthtext_change"
    if (root / "annotations.npy").is_file():
        return "virat_std"
    if any(root.glob("mask_*_00000.png")):
        return "kubric_change"
    return None


_READERS = {"coco_inpainted": CocoInpaintedTest, "synthtext_change": SynthtextChange,
            "virat_std": ViratStd, "kubric_change": KubricChange}


def open_testset(root: str | Path, name: str | None = None) -> TestSet:
    """Open a test-set folder with the reader its layout calls for."""
    kind = detect_kind(root)
    if kind is None:
        raise SpotdiffError(f"{root}: not a test-set folder (none of the COCO-Inpainted, Synthtext-Change, "
                            "VIRAT-STD, Kubric-Change layouts); run `spotdiff testsets` or check the path")
    return _READERS[kind](root, name)


def set_name(kind: str, path: Path) -> str:
    """Report name of a set: e.g. `coco_inpainted_small`, `virat_std`."""
    if kind == "coco_inpainted" and path.name in COCO_SUBSETS:
        return f"coco_inpainted_{path.name}"
    return kind


def find_testsets(root: str | Path) -> dict[str, Path]:
    """Every test set under `root` (any depth, not inside another set), by report name, sorted."""
    root = Path(root)
    found: dict[str, Path] = {}
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        kind = detect_kind(here)
        if kind is None:
            dirnames.sort()
            continue
        dirnames[:] = []  # a set's own sub-folders are not sets
        name = set_name(kind, here)
        if name in found:
            raise SpotdiffError(f"{here}: a second {name} set (first at {found[name]}); keep one")
        found[name] = here
    return dict(sorted(found.items()))


# ---------------------------------------------------------------- official download

HINT = "check testsets.official_base_url"


def parse_sha512sums(text: str, source: str) -> dict[str, str]:
    """`<128 hex>  <name>` lines (`*name` binary marker allowed) -> {name: digest}."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([0-9a-fA-F]{128})\s+\*?(.+)", line)
        if not m:
            raise SpotdiffError(f"{source}: line {n} is not '<sha512>  <file name>'; the checksum list "
                                "is damaged")
        out[m.group(2).strip()] = m.group(1).lower()
    if not out:
        raise SpotdiffError(f"{source}: no checksums listed; check testsets.official_base_url")
    return out


def download(base_url: str, dest: str | Path, archives: Sequence[str] = (), cache: str | Path | None = None,
             timeout: float = 60.0) -> list[Path]:
    """Fetch `archives` (default: all listed) from `base_url`, verify SHA512 against
    `<base_url>/SHA512SUMS`, and extract them into `dest`. Returns the verified archive paths.

    Archives are kept in `cache` (default `dest/.archives`); a cached one is re-verified, not refetched.
    """
    if not base_url:
        raise SpotdiffError("params.yaml: testsets.official_base_url is empty; set it to the authors' "
                            "data URL (the folder holding SHA512SUMS) or use testsets.source: standin")
    base = base_url.rstrip("/") + "/"
    dest = Path(dest)
    cache = Path(cache) if cache is not None else dest / ".archives"
    cache.mkdir(parents=True, exist_ok=True)
    sums_path = cache / "SHA512SUMS"
    sums_path.unlink(missing_ok=True)  # the list itself is always fetched fresh
    fetch(urllib.parse.urljoin(base, "SHA512SUMS"), sums_path, hint=HINT, timeout=timeout)
    sums = parse_sha512sums(sums_path.read_text(errors="replace"), urllib.parse.urljoin(base, "SHA512SUMS"))
    wanted = list(archives) or sorted(sums)
    unknown = [a for a in wanted if a not in sums]
    if unknown:
        raise SpotdiffError(f"{urllib.parse.urljoin(base, 'SHA512SUMS')}: no checksum for {unknown[0]}; "
                            f"listed: {', '.join(sorted(sums))}")
    paths = []
    for name in wanted:
        local = cache / PurePosixPath(name).name
        if local.is_file() and file_digest(local, "sha512") != sums[name]:
            local.unlink()
        fetch(urllib.parse.urljoin(base, urllib.parse.quote(name)), local, sums[name], "sha512", HINT, timeout)
        paths.append(local)
    for path in paths:
        extract_archive(path, dest)
    return paths
