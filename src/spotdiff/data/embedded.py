"""The embedded source: a generated COCO-style instance dataset, so the whole pipeline runs offline.

Scenes are crops of real photographs that ship inside scikit-image, with several objects pasted on
top: discs, boxes, stars, blobs and rings, each filled with a texture cut from another photograph
(or a tinted flat colour), with an outline, in sizes that span COCO's small / medium / large
classes. Later objects occlude earlier ones and each annotation is the object's *visible* mask, as
in COCO. Everything is drawn from `numpy.random.default_rng(seed, index)`, so the same params give
the same bytes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

CATEGORIES = [
    {"id": 1, "name": "disc", "supercategory": "shape"},
    {"id": 2, "name": "box", "supercategory": "shape"},
    {"id": 3, "name": "star", "supercategory": "shape"},
    {"id": 4, "name": "blob", "supercategory": "shape"},
    {"id": 5, "name": "ring", "supercategory": "shape"},
]

# COCO's size classes by area (pixels): small < 32², medium < 96², large otherwise.
SIZE_CLASS_EDGES = (32 * 32, 96 * 96)
MIN_VISIBLE_FRACTION = 0.35  # an object mostly hidden by later ones is dropped from the scene
MIN_VISIBLE_AREA = 48


@functools.lru_cache(maxsize=1)
def photo_pool() -> tuple[np.ndarray, ...]:
    """Real colour photographs bundled with scikit-image (no network), as uint8 RGB."""
    import skimage.data as sk

    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
             "retina", "colorwheel"]
    photos = [np.ascontiguousarray(getattr(sk, n)()[..., :3]) for n in names]
    grey = ["camera", "brick", "grass", "gravel", "moon"]
    photos += [np.repeat(getattr(sk, n)()[..., None], 3, axis=2) for n in grey]
    return tuple(photos)


def _random_crop(rng: np.random.Generator, photo: np.ndarray, width: int, height: int) -> np.ndarray:
    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.5, 1.0)
    cw, ch = max(8, int(pw * scale)), max(8, int(ph * scale))
    # keep the crop's aspect ratio close to the target's
    ratio = width / height
    if cw / ch > ratio:
        cw = max(8, int(ch * ratio))
    else:
        ch = max(8, int(cw / ratio))
    x0 = int(rng.integers(0, pw - cw + 1))
    y0 = int(rng.integers(0, ph - ch + 1))
    crop = photo[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=cv2.INTER_AREA)


def background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    photos = photo_pool()
    return _random_crop(rng, photos[int(rng.integers(len(photos)))], width, height)


def _shape_mask(rng: np.random.Generator, category: int, w: int, h: int) -> np.ndarray:
    """A filled shape of the given category inside a w×h canvas (uint8 0/1)."""
    mask = np.zeros((h, w), np.uint8)
    cx, cy = w / 2, h / 2
    if category == 1:  # disc / ellipse
        cv2.ellipse(mask, (int(cx), int(cy)), (max(1, w // 2 - 1), max(1, h // 2 - 1)),
                    float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif category == 2:  # rotated box
        rect = ((cx, cy), (w * rng.uniform(0.55, 0.7), h * rng.uniform(0.55, 0.7)), float(rng.uniform(0, 90)))
        cv2.fillPoly(mask, [cv2.boxPoints(rect).astype(np.int32)], 1)
    elif category == 3:  # star
        k = int(rng.integers(4, 8))
        angles = np.linspace(0, 2 * np.pi, 2 * k, endpoint=False) + rng.uniform(0, np.pi)
        radii = np.where(np.arange(2 * k) % 2 == 0, 1.0, rng.uniform(0.35, 0.6))
        pts = np.stack([cx + radii * (w / 2 - 1) * np.cos(angles), cy + radii * (h / 2 - 1) * np.sin(angles)], 1)
        cv2.fillPoly(mask, [pts.astype(np.int32)], 1)
    elif category == 4:  # blob: a smooth random radial profile
        n = 24
        angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
        harmonics = sum(rng.uniform(-0.15, 0.15) * np.cos(f * angles + rng.uniform(0, 6.3)) for f in (2, 3, 5))
        radii = 0.8 + harmonics
        pts = np.stack([cx + radii * (w / 2 - 1) * np.cos(angles), cy + radii * (h / 2 - 1) * np.sin(angles)], 1)
        cv2.fillPoly(mask, [pts.astype(np.int32)], 1)
    else:  # ring
        axes = (max(2, w // 2 - 1), max(2, h // 2 - 1))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, 0, 0, 360, 1, -1)
        inner = (max(1, int(axes[0] * rng.uniform(0.35, 0.6))), max(1, int(axes[1] * rng.uniform(0.35, 0.6))))
        cv2.ellipse(mask, (int(cx), int(cy)), inner, 0, 0, 360, 0, -1)
    return mask


def _fill(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Object appearance: a texture from a photograph, or a tinted flat colour with mild noise."""
    if rng.random() < 0.6:
        photos = photo_pool()
        tex = _random_crop(rng, photos[int(rng.integers(len(photos)))], w, h).astype(np.float32)
        tint = rng.uniform(0.6, 1.4, size=3)
        return np.clip(tex * tint, 0, 255).astype(np.uint8)
    colour = rng.integers(0, 256, size=3).astype(np.float32)
    noise = rng.normal(0, 12, size=(h, w, 1)).astype(np.float32)
    return np.clip(colour[None, None] + noise, 0, 255).astype(np.uint8)


@dataclass
class SceneObject:
    category_id: int
    mask: np.ndarray  # H×W bool, visible part


def sample_box_size(rng: np.random.Generator, side_range: tuple[float, float], limit: float,
                    aspect_range: tuple[float, float], min_side: int, width: int, height: int
                    ) -> tuple[int, int]:
    """A w×h of geometric-mean side in `side_range` (capped at `limit`: small canvases cannot hold
    the larger sizes) and aspect in `aspect_range`, fitting a width×height canvas."""
    hi = min(side_range[1], limit)
    lo = min(side_range[0], hi)
    side = rng.uniform(lo, hi)
    aspect = rng.uniform(*aspect_range)
    w = int(np.clip(side * np.sqrt(aspect), min_side, width - 2))
    h = int(np.clip(side / np.sqrt(aspect), min_side, height - 2))
    return w, h


def sample_object_size(rng: np.random.Generator, width: int, height: int) -> tuple[int, int]:
    """Object box size, drawn so that small, medium and large (COCO classes) all occur."""
    size_class = rng.choice(3, p=[0.35, 0.4, 0.25])
    side_range = {0: (12, 30), 1: (34, 90), 2: (100, 170)}[int(size_class)]
    return sample_box_size(rng, side_range, 0.8 * min(width, height), (0.6, 1.6), 8, width, height)


def paste_random_object(rng: np.random.Generator, image: np.ndarray, category_id: int | None = None,
                        size: tuple[int, int] | None = None) -> np.ndarray:
    """Draw one random object into `image` (in place); return its full H×W bool mask."""
    height, width = image.shape[:2]
    category = int(rng.integers(1, len(CATEGORIES) + 1)) if category_id is None else category_id
    w, h = size if size is not None else sample_object_size(rng, width, height)
    x0 = int(rng.integers(0, width - w + 1))
    y0 = int(rng.integers(0, height - h + 1))
    local = _shape_mask(rng, category, w, h)
    fill = _fill(rng, w, h)
    # dark or light outline, as real objects have edges against the background
    edge = cv2.morphologyEx(local, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)).astype(bool)
    fill[edge] = (fill[edge].astype(np.int32) * (0.35 if rng.random() < 0.5 else 1.6)).clip(0, 255)
    region = image[y0:y0 + h, x0:x0 + w]
    region[local.astype(bool)] = fill[local.astype(bool)]
    full = np.zeros((height, width), bool)
    full[y0:y0 + h, x0:x0 + w] = local.astype(bool)
    return full


def generate_scene(rng: np.random.Generator, width: int, height: int, n_objects: int
                   ) -> tuple[np.ndarray, list[SceneObject]]:
    """One scene: a photographic background with `n_objects` (or fewer, if mostly occluded) objects."""
    image = background(rng, width, height)
    placed: list[tuple[int, np.ndarray]] = []
    for _ in range(n_objects):
        category = int(rng.integers(1, len(CATEGORIES) + 1))
        full = paste_random_object(rng, image, category)
        placed = [(c, m & ~full) for c, m in placed]  # later objects occlude earlier ones
        placed.append((category, full))
    objects = []
    for category, visible in placed:
        area = int(visible.sum())
        if area >= MIN_VISIBLE_AREA:
            objects.append(SceneObject(category, visible))
    # drop objects hidden beyond recognition (compared with their own drawn area is not kept; use
    # an absolute floor above plus a relative check against the box they span)
    kept = []
    for obj in objects:
        ys, xs = np.nonzero(obj.mask)
        box_area = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
        if obj.mask.sum() >= MIN_VISIBLE_FRACTION * 0.5 * box_area:
            kept.append(obj)
    return image, kept


def size_class(area: float) -> str:
    if area < SIZE_CLASS_EDGES[0]:
        return "small"
    if area < SIZE_CLASS_EDGES[1]:
        return "medium"
    return "large"
