"""Offline stand-ins of the four test sets, generated in exactly their published formats.

They let the evaluate stage run with no network; they are NOT the official sets and every folder says
so in `STANDIN.txt` (the readers expose it as `is_standin`, reports name them "(stand-in)").

Backgrounds and object textures come from scikit-image's bundled photographs through the embedded
generator (`spotdiff.data.embedded`: `background`, `paste_random_object`), so no second object
generator exists. Each kind tests what its official set tests:

- COCO-Inpainted `{small,medium,large}/`: a scene with distractor objects and 1-2 target objects of
  the subset's COCO size class on top; the targets are inpainted away (OpenCV Telea, like our
  `inpaint` stage's opencv backend). Both images get a fixed test augmentation (kornia colour jitter
  + affine, drawn by `spotdiff.data.transforms.PairAugmenter` with the paper's ranges and resampled
  until a change stays visible) stored as `test_augmentations/{original,inpainted}/<idx>.params`.
- Synthtext-Change: words rendered by `spotdiff.data.text` (the renderer the text training pairs
  use) on a background; identity geometry; HDF5 `synthtext-change.h5` with `data/<stem>.png_0` and
  `attrs["wordBB"]` (2×4×N corners of each word's tight box), backgrounds in `bg_img/<stem>.png`.
- VIRAT-STD: a static scene; the second image is under new, *local* light (`spotdiff.data.lighting`:
  cast shadows, pools of light, haze, plus a mild global gain) and small movers (people- and
  car-sized objects) appear, leave or move; a moved object is boxed at both places, and the same
  boxes count in both images, as in the official set. `annotations.npy` = pickled dict
  {id: [[x1,y1,x2,y2], ...]} (written with `np.save` of a dict; read back only by the restricted
  unpickler).
- Kubric-Change: one layered 3D scene (`spotdiff.data.parallax`: a tilted back plane and object
  cards at several depths) seen from two camera centres, so there is parallax, occlusion and
  disocclusion and no single warp aligns the views; 1-3 cards are present in one view only. Each
  image's mask marks the changed cards where that view sees them or their place; the reader boxes
  the mask's connected components.

No-change pairs (`no_change_fraction` of each set, spread evenly over its ids, e.g. every 5th pair
at 0.2): the same scene under the same nuisances, with no change. Each is written in its set's own
format, so the same readers read them (`TestPair.no_change`):
- COCO-Inpainted: an inpainted file whose `<bits>` are all zeros (`<idx>_mask000.png`: nothing
  removed; the image is the original), with its own stored affine + jitter for each image;
- Synthtext-Change: an HDF5 item with no words (`wordBB` of shape 2×4×0): the background twice (the
  official set has no nuisance either: identity geometry, same pixels outside the text);
- VIRAT-STD: an id whose box list is empty; the second image still under new local light;
- Kubric-Change: two views of an unchanged 3D scene with both masks empty.

Everything is drawn from `numpy.random.default_rng([seed, kind, subset, i])`: same params, same bytes
(up to PNG/HDF5 encoders).

How these differ from the stand-ins before issue F15 (numbers from the two are not comparable): the
old Kubric stand-in moved the camera by one homography per view (SSIM's registration undid it
exactly), the old VIRAT stand-in changed the light globally (SSIM's colour fit undid it), no set had
no-change pairs, and each set had 16 pairs (`testsets.pairs_per_set` is now 100). docs/STANDINS.md
has the measured AP spread between test-set seeds.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from spotdiff.boxes import mask_to_box
from spotdiff.data.coco_inpainted import CocoInpaintedWriter
from spotdiff.data.embedded import background, paste_random_object, sample_box_size
from spotdiff.data.lighting import relight
from spotdiff.data.parallax import DEPTH_RANGE, Card, Scene, random_back_plane, render_change_pair
from spotdiff.data.source import encode_mask
from spotdiff.data.testsets import COCO_SUBSETS, STANDIN_MARKER
from spotdiff.data.text import render_words
from spotdiff.data.transforms import PairAugmenter
from spotdiff.fsutil import atomic_path
from spotdiff.imageio import write_png
from spotdiff.params import AugmentParams

_KIND_IDS = {"coco_inpainted": 1, "synthtext_change": 2, "virat_std": 3, "kubric_change": 4}
_SUBSET_IDS = {None: 0, "small": 1, "medium": 2, "large": 3}

# Target object side ranges per COCO size class (area < 32², < 96², >= 96²), before clamping to the image.
_SIDES = {"small": (10, 26), "medium": (40, 80), "large": (104, 150)}


def _rng(seed: int, kind: str, i: int, subset: str | None = None) -> np.random.Generator:
    return np.random.default_rng([seed, _KIND_IDS[kind], _SUBSET_IDS[subset], i])


def is_no_change(i: int, fraction: float) -> bool:
    """Whether pair `i` of a set is a no-change pair: floor(n·fraction) of the first n pairs, evenly spread."""
    return int((i + 1) * fraction) > int(i * fraction)


def write_marker(root: Path, name: str, params_text: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / STANDIN_MARKER).write_text(
        f"STAND-IN — this is NOT the official {name} test set.\n"
        f"Generated offline by spotdiff.data.standins ({params_text}) in the official on-disk format,\n"
        "so the same readers and the same evaluation run on it. Numbers measured on it are not\n"
        "comparable with the paper's, nor with those on the stand-ins before issue F15 (docs/STANDINS.md);\n"
        "every report names it '(stand-in)'.\n")


class _Layer:
    """One object drawn on its own: full mask and its pixels (composited onto any background)."""

    def __init__(self, mask: np.ndarray, pixels: np.ndarray):
        self.mask = mask
        self.pixels = pixels


def _make_layer(rng: np.random.Generator, bg: np.ndarray, size: tuple[int, int] | None = None) -> _Layer:
    canvas = bg.copy()
    if size is None:  # our own size classes (the stand-ins are square and may be small)
        size = _target_size(rng, str(rng.choice(["small", "medium", "large"], p=[0.35, 0.4, 0.25])),
                            min(bg.shape[:2]))
    mask = paste_random_object(rng, canvas, size=size)
    return _Layer(mask, canvas[mask])


def _composite(bg: np.ndarray, layers: list[_Layer]) -> np.ndarray:
    out = bg.copy()
    for layer in layers:
        out[layer.mask] = layer.pixels
    return out


def _target_size(rng: np.random.Generator, subset: str, size: int) -> tuple[int, int]:
    return sample_box_size(rng, _SIDES[subset], int(0.7 * size), (0.75, 1.33), 6, size, size)


# ---------------------------------------------------------------- COCO-Inpainted


def write_coco_inpainted_standin(root: Path, subset: str, pairs: int, size: int, seed: int,
                                 no_change_fraction: float = 0.0) -> dict:
    """One COCO-Inpainted test subset; returns {pair_id: changed masks K×S×S} for checks (K = 0 for a
    no-change pair)."""
    import torch

    writer = CocoInpaintedWriter(root)
    augmenter = PairAugmenter(AugmentParams(), image_size=size)
    truth = {}
    for i in tqdm(range(pairs), desc=f"stand-in coco_inpainted/{subset}", unit="pair"):
        rng = _rng(seed, "coco_inpainted", i, subset)
        no_change = is_no_change(i, no_change_fraction)
        bg = background(rng, size, size)
        layers = [_make_layer(rng, bg) for _ in range(int(rng.integers(1, 4)))]
        n_targets = int(rng.integers(1, 3))
        layers += [_make_layer(rng, bg, _target_size(rng, subset, size)) for _ in range(n_targets)]
        original = _composite(bg, layers)
        # visible masks (later layers occlude earlier ones); drop distractors hidden almost entirely
        visible, cover = [], np.zeros((size, size), bool)
        for layer in reversed(layers):
            visible.append(layer.mask & ~cover)
            cover |= layer.mask
        visible = visible[::-1]
        keep = [k for k, m in enumerate(visible) if m.sum() >= 12 or k >= len(layers) - n_targets]
        visible = [visible[k] for k in keep]
        targets = [] if no_change else list(range(len(visible) - n_targets, len(visible)))
        remove = np.zeros((size, size), np.uint8)
        for k in targets:
            remove |= visible[k].astype(np.uint8)
        remove = cv2.dilate(remove, np.ones((5, 5), np.uint8))
        inpainted = cv2.inpaint(original, remove, 5, cv2.INPAINT_TELEA) if targets else original.copy()
        anns = []
        for k, m in enumerate(visible):
            x1, y1, x2, y2 = mask_to_box(m).tolist()
            anns.append({"id": i * 100 + k + 1, "image_id": i, "category_id": 1, "iscrowd": 0,
                         "area": float(m.sum()), "bbox": [x1, y1, x2 - x1, y2 - y1], "segmentation": encode_mask(m)})
        masks = np.stack([visible[k] for k in targets]) if targets else np.zeros((0, size, size), bool)
        if targets:
            aug = augmenter(original, inpainted, masks, rng=rng)
            aug_params = (aug.params_a, aug.params_b)
        else:  # the same nuisance, drawn once (nothing has to stay visible)
            aug_params = (augmenter.sample_params(size, size, rng), augmenter.sample_params(size, size, rng))
        writer.write_original(i, original)
        writer.write_inpainted(i, targets, len(anns), inpainted)
        for kind, params in zip(("original", "inpainted"), aug_params):
            plain = {part: {k: torch.as_tensor(v).clone() for k, v in params[part].items()}
                     for part in ("aff", "jit")}
            writer.write_test_augmentation(i, kind, plain)
        writer.write_metadata(i, anns)
        truth[str(i)] = masks
    writer.write_index(list(range(pairs)))
    write_marker(root, f"COCO-Inpainted test/{subset}", f"{pairs} pairs, {size}px, seed {seed}")
    return truth


# ---------------------------------------------------------------- Synthtext-Change


def write_synthtext_standin(root: Path, pairs: int, size: int, seed: int, no_change_fraction: float = 0.0) -> dict:
    import h5py

    (root / "bg_img").mkdir(parents=True, exist_ok=True)
    truth = {}
    with h5py.File(root / "synthtext-change.h5", "w") as f:
        data = f.create_group("data")
        for i in tqdm(range(pairs), desc="stand-in synthtext_change", unit="pair"):
            rng = _rng(seed, "synthtext_change", i)
            bg = background(rng, size, size)
            stem = f"standin_{i:04d}"
            write_png(root / "bg_img" / f"{stem}.png", bg)
            text = bg.copy()
            n_words = 0 if is_no_change(i, no_change_fraction) else int(rng.integers(1, 5))
            boxes, _ = render_words(rng, text, n_words)
            key = f"{stem}.png_0"
            ds = data.create_dataset(key, data=text, compression="gzip")
            x1, y1, x2, y2 = boxes.T if len(boxes) else (np.zeros(0),) * 4
            corners = np.stack([np.stack([x1, x2, x2, x1]), np.stack([y1, y1, y2, y2])])  # 2×4×N
            ds.attrs["wordBB"] = corners.astype(np.float32)
            ds.attrs["txt"] = np.array([b"standin"] * len(boxes), dtype="S7")
            truth[key] = boxes
    write_marker(root, "Synthtext-Change", f"{pairs} pairs, {size}px, seed {seed}")
    return truth


# ---------------------------------------------------------------- VIRAT-STD


def _mover_size(rng: np.random.Generator, size: int) -> tuple[int, tuple[int, int]]:
    """(category, w×h) of a small mover: an upright person-like ellipse or a car-like box."""
    if rng.random() < 0.6:
        return 1, (max(4, int(rng.uniform(0.025, 0.045) * size)), max(8, int(rng.uniform(0.07, 0.13) * size)))
    return 2, (max(8, int(rng.uniform(0.08, 0.16) * size)), max(5, int(rng.uniform(0.04, 0.08) * size)))


def _place_mover(rng: np.random.Generator, scene: np.ndarray, occupied: np.ndarray, category: int,
                 wh: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """The scene with one mover pasted (a copy) and its mask, clear of `occupied`; None if no room."""
    for _try in range(20):
        canvas = scene.copy()
        mask = paste_random_object(rng, canvas, category_id=category, size=wh)
        grown = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        if not grown[occupied].any():
            return canvas, mask
    return None


def _shifted(rng: np.random.Generator, mask: np.ndarray, occupied: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray] | None:
    """(mask at a new place, the source mask in the same pixel order) of an object moved by a random
    shift that keeps it inside the frame and clear of `occupied`; None if no room."""
    h, w = mask.shape
    x1, y1, x2, y2 = mask_to_box(mask).astype(int)
    for _try in range(20):
        dx = int(rng.integers(-x1, w - x2 + 1))
        dy = int(rng.integers(-y1, h - y2 + 1))
        if abs(dx) < (x2 - x1) and abs(dy) < (y2 - y1):
            continue  # overlaps its old place: move it clear
        dst = np.zeros_like(mask)
        dst[y1 + dy:y2 + dy, x1 + dx:x2 + dx] = mask[y1:y2, x1:x2]
        grown = cv2.dilate(dst.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        if not grown[occupied].any():
            src = np.zeros_like(mask)
            src[y1:y2, x1:x2] = mask[y1:y2, x1:x2]
            return dst, src
    return None


def write_virat_standin(root: Path, pairs: int, size: int, seed: int, no_change_fraction: float = 0.0) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    annotations: dict[str, list] = {}
    for i in tqdm(range(pairs), desc="stand-in virat_std", unit="pair"):
        rng = _rng(seed, "virat_std", i)
        bg = background(rng, size, size)
        scene = _composite(bg, [_make_layer(rng, bg) for _ in range(int(rng.integers(0, 3)))])
        image_a, image_b = scene.copy(), scene.copy()
        occupied = np.zeros((size, size), bool)
        boxes = []
        n_events = 0 if is_no_change(i, no_change_fraction) else int(rng.integers(1, 4))
        for _ in range(n_events):
            category, wh = _mover_size(rng, size)
            event = str(rng.choice(["appears", "leaves", "moves"]))
            first = _place_mover(rng, scene, occupied, category, wh)
            if first is None:
                continue
            pixels, mask = first
            occupied |= mask
            if event == "moves":  # the same object at a second place in b
                moved = _shifted(rng, mask, occupied)
                if moved is None:
                    occupied &= ~mask
                    continue
                dst, src = moved
                image_a[mask] = pixels[mask]
                image_b[dst] = pixels[src]
                occupied |= dst
                boxes += [mask_to_box(mask).tolist(), mask_to_box(dst).tolist()]
            else:
                target = image_a if event == "leaves" else image_b
                target[mask] = pixels[mask]
                boxes.append(mask_to_box(mask).tolist())
        image_b = relight(rng, image_b)
        pid = f"{i:04d}"
        write_png(root / f"{pid}.png", image_a)
        write_png(root / f"{pid}_2.png", image_b)
        annotations[pid] = boxes
    with atomic_path(root / "annotations.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.array(annotations, dtype=object), allow_pickle=True)
    write_marker(root, "VIRAT-STD", f"{pairs} pairs, {size}px, seed {seed}")
    return {k: np.asarray(v, np.float64).reshape(-1, 4) for k, v in annotations.items()}


# ---------------------------------------------------------------- Kubric-Change


def _card(rng: np.random.Generator, texture: np.ndarray, size: tuple[int, int] | None,
          present: tuple[bool, bool] = (True, True)) -> Card:
    canvas = texture.copy()
    if size is None:
        size = _target_size(rng, str(rng.choice(["small", "medium", "large"], p=[0.3, 0.5, 0.2])),
                            min(texture.shape[:2]))
    mask = paste_random_object(rng, canvas, size=size)
    return Card(canvas, mask, float(rng.uniform(*DEPTH_RANGE)), present)


def write_kubric_standin(root: Path, pairs: int, size: int, seed: int, no_change_fraction: float = 0.0) -> dict:
    """Returns {pair_id: [masks K×S×S of view 0, of view 1]} of the changed cards (K = 0: no change)."""
    root.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in tqdm(range(pairs), desc="stand-in kubric_change", unit="pair"):
        rng = _rng(seed, "kubric_change", i)
        bg = background(rng, size, size)
        floor = _composite(bg, [_make_layer(rng, bg) for _ in range(int(rng.integers(0, 3)))])  # flat on it
        normal, distance = random_back_plane(rng)
        cards = [_card(rng, floor, None) for _ in range(int(rng.integers(1, 4)))]
        occupied = np.zeros((size, size), bool)
        n_changed = 0 if is_no_change(i, no_change_fraction) else int(rng.integers(1, 4))
        for _ in range(n_changed):
            view = int(rng.integers(0, 2))
            for _try in range(20):
                card = _card(rng, floor, _target_size(rng, str(rng.choice(["small", "medium"])), size),
                             (view == 0, view == 1))
                grown = cv2.dilate(card.mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
                if not grown[occupied].any():
                    cards.append(card)
                    occupied |= grown
                    break
        scene = Scene(floor, normal, distance, cards)
        images, masks, _ = render_change_pair(rng, scene)
        pid = str(i)
        for k in (0, 1):
            write_png(root / f"{pid}_{k}.png", images[k])
            union = np.zeros((size, size), np.uint8)
            for m in masks[k]:
                union[m] = 255
            write_png(root / f"mask_{pid}_0000{k}.png", union)
        truth[pid] = [np.stack(m) if m else np.zeros((0, size, size), bool) for m in masks]
    write_marker(root, "Kubric-Change", f"{pairs} pairs, {size}px, seed {seed}")
    return truth


# ---------------------------------------------------------------- all four


def write_standins(out: Path, pairs: int, size: int, seed: int, no_change_fraction: float = 0.0
                   ) -> dict[str, Path]:
    """All four stand-ins under `out` (coco_inpainted/{small,medium,large}, synthtext_change,
    virat_std, kubric_change), `no_change_fraction` of each set's pairs without a change; returns
    {set name: folder}."""
    out = Path(out)
    sets: dict[str, Path] = {}
    for subset in COCO_SUBSETS:
        path = out / "coco_inpainted" / subset
        write_coco_inpainted_standin(path, subset, pairs, size, seed, no_change_fraction)
        sets[f"coco_inpainted_{subset}"] = path
    write_marker(out / "coco_inpainted", "COCO-Inpainted", f"{pairs} pairs per subset, {size}px, seed {seed}")
    for name, fn in (("synthtext_change", write_synthtext_standin), ("virat_std", write_virat_standin),
                     ("kubric_change", write_kubric_standin)):
        fn(out / name, pairs, size, seed, no_change_fraction)
        sets[name] = out / name
    n_none = sum(is_no_change(i, no_change_fraction) for i in range(pairs))
    write_marker(out, "four", f"{pairs} pairs per set ({n_none} without a change), {size}px, seed {seed}")
    return sets
