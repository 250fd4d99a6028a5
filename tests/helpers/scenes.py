"""Generated spot-the-difference scenes with known edits, for the pixel-wise detector's behavioural tests
(tests/test_pixelwise_scenes.py).

A scene is a flat or gently graded background with flat and textured shapes (ellipses, rectangles,
triangles; plain, checkered or striped; anti-aliased edges). `make_scene(seed, k)` draws image A,
applies K edits to K distinct shapes — removed, added, recoloured, moved, resized — and draws image B.
Each edit keeps the boxes (A's pixels) where it changes the picture, so a detector's boxes can be
matched to edits: `score_edits` counts an edit as found when a box overlaps one of its regions with
IoU ≥ 0.5, and a box as correct when it does so for any edit.

Also here: `paste_textured_object` (a checkered ellipse pasted on a photo-like background) and
`camera_nudge` (translate / rotate / scale image B about its centre).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

EDIT_KINDS = ("removed", "added", "recoloured", "moved", "resized")


@dataclass
class Shape:
    kind: str  # ellipse | rect | triangle
    cx: float
    cy: float
    rx: float
    ry: float
    colour: tuple[int, int, int]
    texture: str  # plain | checker | stripes
    colour2: tuple[int, int, int] = (0, 0, 0)
    angle: float = 0.0

    def box(self) -> np.ndarray:
        return np.array([self.cx - self.rx, self.cy - self.ry, self.cx + self.rx, self.cy + self.ry])


@dataclass
class Scene:
    image_a: np.ndarray
    image_b: np.ndarray
    edits: list[tuple[str, list[np.ndarray]]] = field(default_factory=list)  # (kind, regions in A px)


def gradient_background(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    c0 = rng.integers(120, 235, 3).astype(np.float32)
    c1 = np.clip(c0 + rng.integers(-40, 40, 3), 0, 255).astype(np.float32)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    return np.broadcast_to(c0 * (1 - t) + c1 * t, (h, w, 3)).astype(np.uint8).copy()


def _shape_mask(s: Shape, w: int, h: int) -> np.ndarray:
    """Anti-aliased coverage of the shape, float32 in [0, 1] (drawn at 4× and area-averaged)."""
    f = 4
    m = np.zeros((h * f, w * f), np.uint8)
    c = (int(round(s.cx * f)), int(round(s.cy * f)))
    if s.kind == "ellipse":
        cv2.ellipse(m, c, (int(s.rx * f), int(s.ry * f)), s.angle, 0, 360, 255, -1)
    elif s.kind == "rect":
        cv2.rectangle(m, (int((s.cx - s.rx) * f), int((s.cy - s.ry) * f)),
                      (int((s.cx + s.rx) * f), int((s.cy + s.ry) * f)), 255, -1)
    else:
        pts = np.array([[s.cx, s.cy - s.ry], [s.cx + s.rx, s.cy + s.ry], [s.cx - s.rx, s.cy + s.ry]]) * f
        cv2.fillPoly(m, [pts.astype(np.int32)], 255)
    return cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _shape_paint(s: Shape, w: int, h: int) -> np.ndarray:
    paint = np.empty((h, w, 3), np.float32)
    paint[:] = s.colour
    if s.texture != "plain":
        yy, xx = np.mgrid[0:h, 0:w]
        period = max(4, int(min(s.rx, s.ry) / 3))
        if s.texture == "checker":
            on = ((xx - int(s.cx)) // period + (yy - int(s.cy)) // period) % 2 == 1
        else:
            on = ((xx + yy) // period) % 2 == 1
        paint[on] = s.colour2
    return paint


def render(background: np.ndarray, shapes: list[Shape], antialias: bool = True) -> np.ndarray:
    h, w = background.shape[:2]
    img = background.astype(np.float32)
    for s in shapes:
        m = _shape_mask(s, w, h)
        if not antialias:
            m = (m >= 0.5).astype(np.float32)
        img = img * (1 - m[..., None]) + _shape_paint(s, w, h) * m[..., None]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _random_colour(rng: np.random.Generator, away_from: np.ndarray | None = None) -> tuple[int, int, int]:
    """A colour whose grey level differs from `away_from`'s by ≥ 50 (a change people see at a glance)."""
    while True:
        c = rng.integers(0, 256, 3)
        grey = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
        if away_from is None or abs(grey - (0.299 * away_from[0] + 0.587 * away_from[1]
                                            + 0.114 * away_from[2])) >= 50:
            return tuple(int(v) for v in c)


def random_shape(rng: np.random.Generator, cx: float, cy: float, r: float, bg: np.ndarray) -> Shape:
    kind = str(rng.choice(["ellipse", "rect", "triangle"]))
    texture = str(rng.choice(["plain", "plain", "checker", "stripes"]))
    colour = _random_colour(rng, bg)
    rx, ry = r * rng.uniform(0.6, 1.0), r * rng.uniform(0.6, 1.0)
    return Shape(kind, cx, cy, rx, ry, colour, texture, _random_colour(rng, np.array(colour)))


def make_scene(seed: int, k: int = 6, size: tuple[int, int] = (480, 360), cells: tuple[int, int] = (5, 4)
               ) -> Scene:
    """A cartoon scene on a `cells` grid (one shape per cell, some cells left free) and K edits."""
    rng = np.random.default_rng(seed)
    w, h = size
    bg = gradient_background(w, h, rng)
    bg_mean = bg.reshape(-1, 3).mean(axis=0)
    cw, ch = w / cells[0], h / cells[1]
    r = 0.30 * min(cw, ch)
    grid = [(i, j) for j in range(cells[1]) for i in range(cells[0])]
    order = rng.permutation(len(grid))
    n_free = max(2, k // 2)
    free = [grid[i] for i in order[:n_free]]
    used = [grid[i] for i in order[n_free:]]

    def centre(cell):
        i, j = cell
        return ((i + 0.5) * cw + rng.uniform(-0.1, 0.1) * cw, (j + 0.5) * ch + rng.uniform(-0.1, 0.1) * ch)

    shapes_a = [random_shape(rng, *centre(c), r, bg_mean) for c in used]
    shapes_b = list(shapes_a)
    kinds = [EDIT_KINDS[i % len(EDIT_KINDS)] for i in rng.permutation(k)]
    edited = rng.choice(len(shapes_a), size=k, replace=False)
    edits: list[tuple[str, list[np.ndarray]]] = []
    for kind, idx in zip(kinds, edited):
        s = shapes_a[idx]
        if kind == "removed":
            shapes_b[idx] = None
            edits.append((kind, [s.box()]))
        elif kind == "recoloured":
            shapes_b[idx] = replace(s, colour=_random_colour(rng, np.array(s.colour)))
            edits.append((kind, [s.box()]))
        elif kind == "resized":
            f = rng.choice([0.6, 1.45])
            shapes_b[idx] = replace(s, rx=s.rx * f, ry=s.ry * f)
            big = s if f < 1 else shapes_b[idx]
            edits.append((kind, [big.box()]))
        elif kind == "moved" and free:
            cell = free.pop()
            cx, cy = centre(cell)
            shapes_b[idx] = replace(s, cx=cx, cy=cy)
            edits.append((kind, [s.box(), shapes_b[idx].box()]))
        else:  # added (or a move with no free cell left)
            cell = free.pop() if free else None
            if cell is None:
                shapes_b[idx] = None
                edits.append(("removed", [s.box()]))
                continue
            new = random_shape(rng, *centre(cell), r, bg_mean)
            shapes_b.append(new)
            edits.append(("added", [new.box()]))
    img_a = render(bg, shapes_a)
    img_b = render(bg, [s for s in shapes_b if s is not None])
    return Scene(img_a, img_b, edits)


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def score_edits(boxes: np.ndarray, edits: list[tuple[str, list[np.ndarray]]], iou_min: float = 0.5
                ) -> tuple[int, int]:
    """(edits found, boxes that are on an edit): IoU ≥ `iou_min` with one of an edit's regions."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    regions = np.array([r for _, rs in edits for r in rs]).reshape(-1, 4)
    owner = np.array([i for i, (_, rs) in enumerate(edits) for _ in rs])
    if len(boxes) == 0:
        return 0, 0
    hit = np.stack([iou_one_to_many(r, boxes) >= iou_min for r in regions])  # regions × boxes
    found = len(set(owner[hit.any(axis=1)].tolist()))
    correct = int(hit.any(axis=0).sum())
    return found, correct


def camera_nudge(img: np.ndarray, dx: float = 0.0, dy: float = 0.0, angle: float = 0.0, scale: float = 1.0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """`img` moved by (dx, dy) px, rotated by `angle`° and scaled about its centre (reflected borders);
    returns (image, 2×3 matrix mapping the original's pixels to the new ones)."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[:, 2] += (dx, dy)
    out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out, m


def map_boxes(boxes: np.ndarray, m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Axis-aligned boxes around `boxes` (xyxy) moved by the 2×3 matrix `m`, clipped to `size`."""
    out = []
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4):
        pts = np.array([[x1, y1, 1], [x2, y1, 1], [x2, y2, 1], [x1, y2, 1]]) @ m.T
        out.append([*pts.min(axis=0), *pts.max(axis=0)])
    out = np.array(out).reshape(-1, 4)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, size[0])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, size[1])
    return out


def photo_background(w: int, h: int, seed: int) -> np.ndarray:
    """A photo-like background: smooth colour blobs plus fine grain (features for registration)."""
    rng = np.random.default_rng(seed)
    low = rng.integers(40, 220, (h // 32 + 2, w // 32 + 2, 3)).astype(np.uint8)
    img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    detail = cv2.GaussianBlur(rng.normal(0, 25, (h, w)).astype(np.float32), (0, 0), 1.2)
    return np.clip(img + detail[..., None], 0, 255).astype(np.uint8)


def paste_textured_object(img: np.ndarray, cx: int, cy: int, w: int = 120, h: int = 100, period: int = 10,
                          colours=((230, 40, 40), (30, 30, 160))) -> tuple[np.ndarray, np.ndarray]:
    """A checkered ellipse (w×h) pasted at (cx, cy); returns (image, its box xyxy)."""
    s = Shape("ellipse", cx, cy, w / 2, h / 2, colours[0], "checker", colours[1])
    ih, iw = img.shape[:2]
    m = _shape_mask(s, iw, ih)
    paint = _shape_paint(replace(s, rx=period * 3, ry=period * 3), iw, ih)  # period = min(r)/3
    out = img.astype(np.float32) * (1 - m[..., None]) + paint * m[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), s.box()
