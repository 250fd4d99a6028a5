"""Offline stand-ins of the four test sets, generated in exactly their published formats.

They let the evaluate stage run with no network; they are NOT the official sets and every folder says
so in `STANDIN.txt` (the readers expose it as `is_standin`, reports name them "(stand-in)").

Backgrounds and object textures come from scikit-image's bundled photographs through the embedded
generator (`spotdiff.data.embedded`: `background`, `paste_random_object`), so no second object
generator exists. Each kind mimics what its official set tests:

- COCO-Inpainted `{small,medium,large}/`: a scene with distractor objects and 1-2 target objects of
  the subset's COCO size class on top; the targets are inpainted away (OpenCV Telea, like our
  `inpaint` stage's opencv backend). Both images get a fixed test augmentation (kornia colour jitter
  + affine, drawn by `spotdiff.data.transforms.PairAugmenter` with the paper's ranges and resampled
  until a change stays visible) stored as `test_augmentations/{original,inpainted}/<idx>.params`.
- Synthtext-Change: words rendered with `cv2.putText` (random Hershey font, size, colour) on a
  background; identity geometry; HDF5 `synthtext-change.h5` with `data/<stem>.png_0` and
  `attrs["wordBB"]` (2×4×N corners of each word's tight box), backgrounds in `bg_img/<stem>.png`.
- VIRAT-STD: a static scene; the second image has a global lighting change (gain, gamma, colour
  cast) and objects added or removed; `annotations.npy` = pickled dict {id: [[x1,y1,x2,y2], ...]}
  (written with `np.save` of a dict; read back only by the restricted unpickler).
- Kubric-Change: objects removed between two views of one scene under a perspective camera move
  (a random homography per view); each image's mask marks the changed objects where that view sees
  their place; the reader boxes the mask's connected components.

Everything is drawn from `numpy.random.default_rng([seed, kind, subset, i])`: same params, same bytes
(up to PNG/HDF5 encoders).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from spotdiff.boxes import mask_to_box
from spotdiff.data.coco_inpainted import CocoInpaintedWriter
from spotdiff.data.embedded import background, paste_random_object, sample_box_size
from spotdiff.data.source import encode_mask
from spotdiff.data.testsets import COCO_SUBSETS, STANDIN_MARKER
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


def write_marker(root: Path, name: str, params_text: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / STANDIN_MARKER).write_text(
        f"STAND-IN — this is NOT the official {name} test set.\n"
        f"Generated offline by spotdiff.data.standins ({params_text}) in the official on-disk format,\n"
        "so the same readers and the same evaluation run on it. Numbers measured on it are not\n"
        "comparable with the paper's; every report names it '(stand-in)'.\n")


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


def write_coco_inpainted_standin(root: Path, subset: str, pairs: int, size: int, seed: int) -> dict:
    """One COCO-Inpainted test subset; returns {pair_id: changed masks K×S×S} for checks."""
    import torch

    writer = CocoInpaintedWriter(root)
    augmenter = PairAugmenter(AugmentParams(), image_size=size)
    truth = {}
    for i in tqdm(range(pairs), desc=f"stand-in coco_inpainted/{subset}", unit="pair"):
        rng = _rng(seed, "coco_inpainted", i, subset)
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
        targets = list(range(len(visible) - n_targets, len(visible)))
        remove = np.zeros((size, size), np.uint8)
        for k in targets:
            remove |= visible[k].astype(np.uint8)
        remove = cv2.dilate(remove, np.ones((5, 5), np.uint8))
        inpainted = cv2.inpaint(original, remove, 5, cv2.INPAINT_TELEA)
        anns = []
        for k, m in enumerate(visible):
            x1, y1, x2, y2 = mask_to_box(m).tolist()
            anns.append({"id": i * 100 + k + 1, "image_id": i, "category_id": 1, "iscrowd": 0,
                         "area": float(m.sum()), "bbox": [x1, y1, x2 - x1, y2 - y1], "segmentation": encode_mask(m)})
        masks = np.stack([visible[k] for k in targets])
        aug = augmenter(original, inpainted, masks, rng=rng)
        writer.write_original(i, original)
        writer.write_inpainted(i, targets, len(anns), inpainted)
        for kind, params in (("original", aug.params_a), ("inpainted", aug.params_b)):
            plain = {part: {k: torch.as_tensor(v).clone() for k, v in params[part].items()}
                     for part in ("aff", "jit")}
            writer.write_test_augmentation(i, kind, plain)
        writer.write_metadata(i, anns)
        truth[str(i)] = masks
    writer.write_index(list(range(pairs)))
    write_marker(root, f"COCO-Inpainted test/{subset}", f"{pairs} pairs, {size}px, seed {seed}")
    return truth


# ---------------------------------------------------------------- Synthtext-Change

_FONTS = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
          cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN]
_WORDS = ["the", "change", "you", "want", "to", "see", "spot", "diff", "open", "exit", "cafe", "shop",
          "north", "road", "stop", "sale", "bank", "hotel", "park", "river", "Oxford", "VGG", "2023"]


def _render_words(rng: np.random.Generator, image: np.ndarray, n_words: int) -> np.ndarray:
    """Draw words in place; return their tight boxes (K×4, exclusive), non-overlapping."""
    h, w = image.shape[:2]
    boxes: list[np.ndarray] = []
    occupied = np.zeros((h, w), bool)
    for _ in range(n_words):
        for _try in range(30):
            word = str(rng.choice(_WORDS))
            font = _FONTS[int(rng.integers(len(_FONTS)))]
            scale = float(rng.uniform(0.4, 1.4)) * w / 256
            thick = int(rng.integers(1, 3))
            (tw, th), base = cv2.getTextSize(word, font, scale, thick)
            if tw + 4 >= w or th + base + 4 >= h:
                continue
            x = int(rng.integers(2, w - tw - 2))
            y = int(rng.integers(th + 2, h - base - 2))
            mask = np.zeros((h, w), np.uint8)
            cv2.putText(mask, word, (x, y), font, scale, 255, thick, cv2.LINE_AA)
            mask = mask > 60
            box = mask_to_box(mask)
            if box is None:
                continue
            x1, y1, x2, y2 = box.astype(int)
            if occupied[max(y1 - 2, 0):y2 + 2, max(x1 - 2, 0):x2 + 2].any():
                continue
            colour = rng.integers(0, 256, 3)
            region = image[y1:y2, x1:x2].reshape(-1, 3).mean(0)
            if np.abs(colour - region).sum() < 150:  # keep the text legible against its background
                colour = 255 - region.astype(int)
            cv2.putText(image, word, (x, y), font, scale, [int(c) for c in colour], thick, cv2.LINE_AA)
            occupied[y1:y2, x1:x2] = True
            boxes.append(box)
            break
    return np.asarray(boxes, np.float64).reshape(-1, 4)


def write_synthtext_standin(root: Path, pairs: int, size: int, seed: int) -> dict:
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
            boxes = _render_words(rng, text, int(rng.integers(1, 5)))
            key = f"{stem}.png_0"
            ds = data.create_dataset(key, data=text, compression="gzip")
            x1, y1, x2, y2 = boxes.T if len(boxes) else (np.zeros(0),) * 4
            corners = np.stack([np.stack([x1, x2, x2, x1]), np.stack([y1, y1, y2, y2])])  # 2×4×N
            ds.attrs["wordBB"] = corners.astype(np.float32)
            ds.attrs["txt"] = np.array([b"standin"] * len(boxes))
            truth[key] = boxes
    write_marker(root, "Synthtext-Change", f"{pairs} pairs, {size}px, seed {seed}")
    return truth


# ---------------------------------------------------------------- VIRAT-STD


def _lighting(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    gain = rng.uniform(0.7, 1.3)
    gamma = rng.uniform(0.8, 1.25)
    cast = rng.uniform(0.92, 1.08, 3)
    x = (image.astype(np.float32) / 255.0) ** gamma * gain * cast
    x += rng.normal(0, 0.01, x.shape).astype(np.float32)
    return (x.clip(0, 1) * 255 + 0.5).astype(np.uint8)


def write_virat_standin(root: Path, pairs: int, size: int, seed: int) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    annotations: dict[str, list] = {}
    for i in tqdm(range(pairs), desc="stand-in virat_std", unit="pair"):
        rng = _rng(seed, "virat_std", i)
        bg = background(rng, size, size)
        static = [_make_layer(rng, bg) for _ in range(int(rng.integers(0, 3)))]
        scene = _composite(bg, static)
        changed: list[_Layer] = []
        occupied = np.zeros((size, size), bool)
        for _ in range(int(rng.integers(1, 4))):
            for _try in range(20):
                layer = _make_layer(rng, scene, _target_size(rng, str(rng.choice(["small", "medium"])), size))
                grown = cv2.dilate(layer.mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
                if not grown[occupied].any():
                    changed.append(layer)
                    occupied |= layer.mask
                    break
        in_a = rng.random(len(changed)) < 0.5  # each change: present in A only, or in B only
        image_a = _composite(scene, [c for c, a in zip(changed, in_a) if a])
        image_b = _lighting(rng, _composite(scene, [c for c, a in zip(changed, in_a) if not a]))
        pid = f"{i:04d}"
        write_png(root / f"{pid}.png", image_a)
        write_png(root / f"{pid}_2.png", image_b)
        annotations[pid] = [mask_to_box(c.mask).tolist() for c in changed]
    with atomic_path(root / "annotations.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.array(annotations, dtype=object), allow_pickle=True)
    write_marker(root, "VIRAT-STD", f"{pairs} pairs, {size}px, seed {seed}")
    return {k: np.asarray(v, np.float64).reshape(-1, 4) for k, v in annotations.items()}


# ---------------------------------------------------------------- Kubric-Change


def _random_homography(rng: np.random.Generator, size: int, amount: float = 0.08) -> np.ndarray:
    src = np.float32([[0, 0], [size, 0], [size, size], [0, size]])
    dst = src + rng.uniform(-amount, amount, (4, 2)).astype(np.float32) * size
    return cv2.getPerspectiveTransform(src, dst)


def write_kubric_standin(root: Path, pairs: int, size: int, seed: int) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in tqdm(range(pairs), desc="stand-in kubric_change", unit="pair"):
        rng = _rng(seed, "kubric_change", i)
        bg = background(rng, size, size)
        scene = _composite(bg, [_make_layer(rng, bg) for _ in range(int(rng.integers(0, 3)))])
        views = [_random_homography(rng, size) for _ in range(2)]

        def warp(img, hom, nearest=False):
            return cv2.warpPerspective(img, hom, (size, size),
                                       flags=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_CONSTANT if nearest else cv2.BORDER_REFLECT)

        changed: list[tuple[_Layer, int]] = []  # (object, the view it is present in)
        occupied = np.zeros((size, size), bool)
        for _ in range(int(rng.integers(1, 4))):
            for _try in range(20):
                layer = _make_layer(rng, scene, _target_size(rng, str(rng.choice(["small", "medium"])), size))
                grown = cv2.dilate(layer.mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
                if grown[occupied].any():
                    continue
                seen = [warp(layer.mask.astype(np.uint8), h, True).sum() >= 30 for h in views]
                if all(seen):
                    changed.append((layer, int(rng.integers(0, 2))))
                    occupied |= grown
                    break
        masks_k, images_k = [], []
        for k, hom in enumerate(views):
            world = _composite(scene, [c for c, v in changed if v == k])
            images_k.append(warp(world, hom))
            masks_k.append([warp(c.mask.astype(np.uint8), hom, True) > 0 for c, _ in changed])
        pid = str(i)
        for k in (0, 1):
            write_png(root / f"{pid}_{k}.png", images_k[k])
            union = np.zeros((size, size), np.uint8)
            for m in masks_k[k]:
                union[m] = 255
            write_png(root / f"mask_{pid}_0000{k}.png", union)
        truth[pid] = [np.stack(m) if m else np.zeros((0, size, size), bool) for m in masks_k]
    write_marker(root, "Kubric-Change", f"{pairs} pairs, {size}px, seed {seed}")
    return truth


# ---------------------------------------------------------------- all four


def write_standins(out: Path, pairs: int, size: int, seed: int) -> dict[str, Path]:
    """All four stand-ins under `out` (coco_inpainted/{small,medium,large}, synthtext_change,
    virat_std, kubric_change); returns {set name: folder}."""
    out = Path(out)
    sets: dict[str, Path] = {}
    for subset in COCO_SUBSETS:
        path = out / "coco_inpainted" / subset
        write_coco_inpainted_standin(path, subset, pairs, size, seed)
        sets[f"coco_inpainted_{subset}"] = path
    write_marker(out / "coco_inpainted", "COCO-Inpainted", f"{pairs} pairs per subset, {size}px, seed {seed}")
    for name, fn in (("synthtext_change", write_synthtext_standin), ("virat_std", write_virat_standin),
                     ("kubric_change", write_kubric_standin)):
        fn(out / name, pairs, size, seed)
        sets[name] = out / name
    write_marker(out, "four", f"{pairs} pairs per set, {size}px, seed {seed}")
    return sets
