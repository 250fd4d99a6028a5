"""A second, independent spot-the-difference generator: outlined cartoon puzzles photographed by hand.

Unlike `helpers.scenes` (flat or textured geometric shapes on a gradient, no outlines, drawn by
4× supersampled masks), a puzzle here is a landscape — sky, hills, a ground band — with outlined
cartoon objects drawn by OpenCV's anti-aliased primitives (black strokes, flat fills): houses,
trees, suns, clouds, balls, flags, fish and flowers. Most objects are asymmetric, so a mirror edit
changes the picture. `make_puzzle(seed)` draws the puzzle on a canvas a few pixels larger than the
frame, applies edits to distinct objects — removed, added, recoloured, moved, resized, mirrored —
some of them placed right next to another object or another edit, and returns:

- image A: the frame cut from the first canvas;
- image B: the frame cut from the edited canvas `shift` px further (a handheld camera: the strip
  along one edge shows what A does not, and A's opposite strip is not in B), `gain` brighter;
- the edits as regions (xyxy) in A's pixels and in B's pixels, and the strips of each image that
  have no counterpart in the other.

`score_puzzle` scores a detector's boxes in both images: an edit is found when a box has IoU ≥ 0.5
with one of its regions (in either image), and a box is correct when it has with any edit's region.
`changed_pixels` is what a per-pixel diff tool (pixelmatch's YIQ colour distance, threshold 0.1)
marks as changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

EDIT_KINDS = ("removed", "added", "recoloured", "moved", "resized", "mirrored")
OBJECT_KINDS = ("house", "tree", "sun", "cloud", "ball", "flag", "fish", "flower")
INK = (25, 20, 30)  # outline colour
PALETTE = [(220, 50, 40), (240, 200, 40), (60, 160, 70), (50, 110, 210), (150, 70, 180), (250, 140, 30),
           (240, 240, 235), (130, 80, 40), (240, 120, 170), (30, 170, 170)]


@dataclass
class Thing:
    kind: str
    cx: float
    cy: float
    size: float  # half-width of the object's box
    colour: tuple[int, int, int]
    colour2: tuple[int, int, int]
    flipped: bool = False

    def box(self) -> np.ndarray:
        """Where the object draws (xyxy, canvas pixels, exclusive ends), outline and fringe included:
        the pixels that drawing it changes on a black and on a white canvas."""
        s = self.size
        x0, y0 = int(self.cx - 2 * s - 4), int(self.cy - 2 * s - 4)
        n = int(4 * s + 8)
        on = []
        for base in (0, 255):
            img = np.full((n, n, 3), base, np.uint8)
            draw(img, replace(self, cx=self.cx - x0, cy=self.cy - y0))
            on.append(np.any(img != base, axis=2))
        ys, xs = np.nonzero(on[0] | on[1])
        return np.array([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1], np.float64)


@dataclass
class Puzzle:
    image_a: np.ndarray
    image_b: np.ndarray
    edits: list[tuple[str, list[np.ndarray]]] = field(default_factory=list)  # regions in A's pixels
    edits_b: list[tuple[str, list[np.ndarray]]] = field(default_factory=list)  # the same in B's pixels
    uncovered_a: np.ndarray | None = None  # bool map: A's pixels that B does not show
    uncovered_b: np.ndarray | None = None


def _pt(x: float, y: float) -> tuple[int, int]:
    return round(x * 16), round(y * 16)  # 4 fractional bits (cv2 shift=4)


def _poly(img, pts, fill, ink=INK, thick=2):
    p = np.array([_pt(x, y) for x, y in pts], np.int32)
    cv2.fillPoly(img, [p], fill, cv2.LINE_AA, 4)
    cv2.polylines(img, [p], True, ink, thick, cv2.LINE_AA, 4)


def _circle(img, cx, cy, r, fill, ink=INK, thick=2):
    cv2.circle(img, _pt(cx, cy), round(r * 16), fill, -1, cv2.LINE_AA, 4)
    cv2.circle(img, _pt(cx, cy), round(r * 16), ink, thick, cv2.LINE_AA, 4)


def draw(img: np.ndarray, t: Thing) -> None:
    """Draw `t` onto `img` (in place). x offsets are mirrored when `t.flipped`."""
    s, cx, cy = t.size, t.cx, t.cy
    f = -1.0 if t.flipped else 1.0

    def X(dx):
        return cx + f * dx * s

    def Y(dy):
        return cy + dy * s

    if t.kind == "house":
        _poly(img, [(X(-0.8), Y(0)), (X(0.8), Y(0)), (X(0.8), Y(1.1)), (X(-0.8), Y(1.1))], t.colour)
        _poly(img, [(X(-1.0), Y(0.05)), (X(-0.2), Y(-1.1)), (X(1.0), Y(0.05))], t.colour2)  # off-centre roof
        _poly(img, [(X(0.2), Y(0.45)), (X(0.55), Y(0.45)), (X(0.55), Y(1.1)), (X(0.2), Y(1.1))], INK[::-1])
        _poly(img, [(X(-0.6), Y(0.3)), (X(-0.2), Y(0.3)), (X(-0.2), Y(0.65)), (X(-0.6), Y(0.65))], (170, 220, 250))
    elif t.kind == "tree":
        _poly(img, [(X(-0.15), Y(0.3)), (X(0.15), Y(0.3)), (X(0.15), Y(1.5)), (X(-0.15), Y(1.5))], (120, 75, 35))
        _poly(img, [(X(0.1), Y(0.8)), (X(0.7), Y(0.45)), (X(0.75), Y(0.55)), (X(0.15), Y(0.95))], (120, 75, 35))
        _circle(img, X(-0.1), Y(-0.5), 0.9 * s, t.colour)
        _circle(img, X(0.6), Y(0.35), 0.3 * s, t.colour)
    elif t.kind == "sun":
        for k in range(8):
            a = k * np.pi / 4
            p1 = _pt(cx + 0.7 * s * np.cos(a), cy + 0.7 * s * np.sin(a))
            p2 = _pt(cx + 1.0 * s * np.cos(a), cy + 1.0 * s * np.sin(a))
            cv2.line(img, p1, p2, INK, 2, cv2.LINE_AA, 4)
        _circle(img, cx, cy, 0.6 * s, t.colour)
        _circle(img, X(0.25), Y(-0.15), 0.08 * s, INK, thick=1)  # a wink: asymmetric
    elif t.kind == "cloud":
        for dx, dy, r in ((-0.55, 0.1, 0.42), (0.0, -0.1, 0.5), (0.5, 0.15, 0.38)):
            cv2.circle(img, _pt(X(dx), Y(dy)), int(r * s * 16), INK, -1, cv2.LINE_AA, 4)
        for dx, dy, r in ((-0.55, 0.1, 0.42), (0.0, -0.1, 0.5), (0.5, 0.15, 0.38)):
            cv2.circle(img, _pt(X(dx), Y(dy)), int((r * s - 2) * 16), t.colour, -1, cv2.LINE_AA, 4)
    elif t.kind == "ball":
        _circle(img, cx, cy, 0.95 * s, t.colour)
        cv2.ellipse(img, _pt(X(0.2), cy), (int(0.35 * s * 16), int(0.93 * s * 16)), 0, 0, 360, t.colour2, 3,
                    cv2.LINE_AA, 4)
    elif t.kind == "flag":
        cv2.line(img, _pt(X(-0.8), Y(-1.2)), _pt(X(-0.8), Y(1.3)), INK, 3, cv2.LINE_AA, 4)
        _poly(img, [(X(-0.8), Y(-1.2)), (X(0.9), Y(-0.75)), (X(-0.8), Y(-0.2))], t.colour)
    elif t.kind == "fish":
        _poly(img, [(X(0.55), Y(0)), (X(1.0), Y(-0.55)), (X(1.0), Y(0.55))], t.colour2)
        cv2.ellipse(img, _pt(X(-0.1), cy), (int(0.7 * s * 16), int(0.45 * s * 16)), 0, 0, 360, t.colour, -1,
                    cv2.LINE_AA, 4)
        cv2.ellipse(img, _pt(X(-0.1), cy), (int(0.7 * s * 16), int(0.45 * s * 16)), 0, 0, 360, INK, 2,
                    cv2.LINE_AA, 4)
        _circle(img, X(-0.5), Y(-0.1), 0.09 * s, INK, thick=1)
    elif t.kind == "flower":
        cv2.line(img, _pt(cx, Y(0.2)), _pt(cx, Y(1.4)), (40, 120, 40), 3, cv2.LINE_AA, 4)
        _poly(img, [(cx, Y(0.9)), (X(0.6), Y(0.6)), (X(0.5), Y(0.85))], (60, 160, 70))
        for k in range(5):
            a = k * 2 * np.pi / 5
            _circle(img, cx + 0.45 * s * np.cos(a), Y(-0.35) + 0.45 * s * np.sin(a), 0.32 * s, t.colour)
        _circle(img, cx, Y(-0.35), 0.22 * s, t.colour2)
    else:
        raise ValueError(t.kind)


def background(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """Sky (a vertical gradient), a hill line, a ground band: flat colours, few corners."""
    sky_top = np.array(rng.integers([90, 150, 200], [140, 200, 250]), np.float32)
    sky_low = np.clip(sky_top + rng.integers(20, 50), 0, 255)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(sky_top * (1 - t) + sky_low * t, (h, w, 3)).astype(np.uint8).copy()
    horizon = h * rng.uniform(0.55, 0.65)
    xs = np.arange(0, w + 8, 8, dtype=np.float32)
    hill = horizon + 0.06 * h * np.sin(xs / w * rng.uniform(4, 8) + rng.uniform(0, 6))
    pts = np.concatenate([np.stack([xs, hill], 1), [[w + 8, h + 8], [-8, h + 8]]])
    grass = tuple(int(v) for v in rng.integers([70, 150, 50], [120, 200, 90]))
    cv2.fillPoly(img, [(pts * 16).astype(np.int32)], grass, cv2.LINE_AA, 4)
    cv2.polylines(img, [(pts[:-2] * 16).astype(np.int32)], False, INK, 2, cv2.LINE_AA, 4)
    return img


def _colour_pair(rng) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    i, j = rng.choice(len(PALETTE), 2, replace=False)
    return PALETTE[i], PALETTE[j]


def _other_colour(rng, c) -> tuple[int, int, int]:
    def grey(v):
        return 0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2]
    choices = [p for p in PALETTE if abs(grey(p) - grey(c)) >= 35 and p != c]
    return choices[rng.integers(len(choices))]


def _overlaps(box, boxes, margin: float) -> bool:
    for b in boxes:
        if box[0] < b[2] + margin and b[0] < box[2] + margin and box[1] < b[3] + margin and b[1] < box[3] + margin:
            return True
    return False


def _place(rng, kind, w, h, taken, size, near: np.ndarray | None = None, margin: float = 6.0,
           tries: int = 200) -> Thing | None:
    for _ in range(tries):
        if near is not None:  # right next to another object: a few pixels from its box
            side = rng.integers(4)
            gap = rng.uniform(3, 8)
            cx = {0: near[0] - gap - size - 2, 1: near[2] + gap + size + 2}.get(side, rng.uniform(near[0], near[2]))
            cy = {2: near[1] - gap - 1.5 * size, 3: near[3] + gap + 1.5 * size}.get(side, rng.uniform(near[1], near[3]))
        else:
            cx, cy = rng.uniform(0.08 * w, 0.92 * w), rng.uniform(0.1 * h, 0.9 * h)
        if kind in ("sun", "cloud") and near is None:
            cy = rng.uniform(0.08 * h, 0.35 * h)
        t = Thing(kind, float(cx), float(cy), float(size), *_colour_pair(rng), flipped=bool(rng.integers(2)))
        b = t.box()
        if b[0] < 4 or b[1] < 4 or b[2] > w - 4 or b[3] > h - 4:
            continue
        if not _overlaps(b, taken, margin if near is None else 2.0):
            return t
    return None


def _changed_box(bg: np.ndarray, before: Thing, after: Thing) -> np.ndarray:
    """The box (xyxy, canvas pixels) of the pixels that an in-place edit changes: `before` and `after`
    each drawn on the background, compared."""
    x1, y1 = np.floor(np.minimum(before.box()[:2], after.box()[:2])).astype(int)
    x2, y2 = np.ceil(np.maximum(before.box()[2:], after.box()[2:])).astype(int)
    x1, y1 = max(x1, 0), max(y1, 0)
    one, two = bg.copy(), bg.copy()
    draw(one, before)
    draw(two, after)
    ys, xs = np.nonzero(np.any(one[y1:y2, x1:x2] != two[y1:y2, x1:x2], axis=2))
    if xs.size == 0:
        return np.array([x1, y1, x2, y2], np.float64)
    return np.array([x1 + xs.min(), y1 + ys.min(), x1 + xs.max() + 1, y1 + ys.max() + 1], np.float64)


def make_puzzle(seed: int, size: tuple[int, int] = (512, 384), n_objects: int = 11, n_edits: int = 6,
                shift: tuple[int, int] = (3, 0), gain: float = 1.06, pad: int = 8) -> Puzzle:
    """A puzzle with `n_edits` edits (see the module doc); B's frame starts `shift` px right / down
    of A's on the canvas (its content moves by −shift) and is `gain` brighter."""
    rng = np.random.default_rng(10_000 + seed)
    w, h = size
    cw, ch = w + 2 * pad, h + 2 * pad
    bg = background(cw, ch, rng)
    things: list[Thing] = []
    kinds = list(OBJECT_KINDS) + list(rng.choice(OBJECT_KINDS, max(0, n_objects - len(OBJECT_KINDS))))
    for kind in kinds[:n_objects]:
        t = _place(rng, kind, cw, ch, [x.box() for x in things], rng.uniform(0.045, 0.075) * w)
        if t is not None:
            things.append(t)
    after: list[Thing | None] = list(things)
    extra: list[Thing] = []
    edits: list[tuple[str, list[np.ndarray]]] = []
    kinds_e = [EDIT_KINDS[i % len(EDIT_KINDS)] for i in rng.permutation(max(n_edits, 1))][:n_edits]
    chosen = rng.choice(len(things), size=min(n_edits, len(things)), replace=False)

    def taken():
        return [t.box() for t in things] + [t.box() for t in after if t is not None] + [t.box() for t in extra]

    for kind, idx in zip(kinds_e, chosen):
        t = things[idx]
        if kind == "removed":
            after[idx] = None
            edits.append((kind, [t.box()]))
        elif kind == "recoloured":
            after[idx] = replace(t, colour=_other_colour(rng, t.colour))
            edits.append((kind, [_changed_box(bg, t, after[idx])]))
        elif kind == "mirrored":
            after[idx] = replace(t, flipped=not t.flipped)
            edits.append((kind, [_changed_box(bg, t, after[idx])]))
        elif kind == "resized":
            f = float(rng.choice([0.7, 1.35]))
            new = replace(t, size=t.size * f)
            others = [b for k, b in enumerate(taken()) if k != idx and k != len(things) + idx]
            if _overlaps(new.box(), [b for b in others if not np.allclose(b, t.box())], 2.0):
                new = replace(t, size=t.size * 0.7)
            after[idx] = new
            big = t if new.size < t.size else new
            edits.append((kind, [big.box()]))
        elif kind == "moved":
            # half the moves land right next to another object (the case that merges neighbours)
            near = things[rng.integers(len(things))].box() if rng.random() < 0.5 else None
            moved = _place(rng, t.kind, cw, ch, taken(), t.size, near=near)
            if moved is None:
                moved = _place(rng, t.kind, cw, ch, taken(), t.size)
            if moved is None:
                after[idx] = None
                edits.append(("removed", [t.box()]))
                continue
            moved = replace(moved, colour=t.colour, colour2=t.colour2, flipped=t.flipped)
            after[idx] = moved
            edits.append((kind, [t.box(), moved.box()]))
        else:  # added: next to an existing object or edit half of the time
            near = taken()[rng.integers(len(taken()))] if rng.random() < 0.5 else None
            new = _place(rng, str(rng.choice(["ball", "flower", "fish", "flag", "tree"])), cw, ch, taken(),
                         rng.uniform(0.04, 0.06) * w, near=near)
            if new is None:
                new = _place(rng, "ball", cw, ch, taken(), 0.04 * w)
            if new is None:
                continue
            extra.append(new)
            edits.append(("added", [new.box()]))
    canvas_a = bg.copy()
    for t in things:
        draw(canvas_a, t)
    canvas_b = bg.copy()
    for t in [t for t in after if t is not None] + extra:
        draw(canvas_b, t)
    dx, dy = shift
    img_a = canvas_a[pad:pad + h, pad:pad + w].copy()
    img_b = canvas_b[pad + dy:pad + dy + h, pad + dx:pad + dx + w]
    img_b = np.clip(img_b.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)
    off_a = np.array([pad, pad, pad, pad], np.float64)
    off_b = off_a + [dx, dy, dx, dy]
    clip = np.array([w, h, w, h], np.float64)
    to_a = [(k, [np.clip(r - off_a, 0, clip) for r in rs]) for k, rs in edits]
    to_b = [(k, [np.clip(r - off_b, 0, clip) for r in rs]) for k, rs in edits]
    unc_a = np.zeros((h, w), bool)  # A's pixels outside B's frame
    unc_b = np.zeros((h, w), bool)
    if dx > 0:
        unc_a[:, :dx], unc_b[:, w - dx:] = True, True
    elif dx < 0:
        unc_a[:, w + dx:], unc_b[:, :-dx] = True, True
    if dy > 0:
        unc_a[:dy], unc_b[h - dy:] = True, True
    elif dy < 0:
        unc_a[h + dy:], unc_b[:-dy] = True, True
    return Puzzle(img_a, img_b, to_a, to_b, unc_a, unc_b)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return inter / np.maximum(union, 1e-9)


def _hits(boxes: np.ndarray, edits, iou_min: float) -> tuple[set[int], np.ndarray]:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    regions = [(i, r) for i, (_, rs) in enumerate(edits) for r in rs]
    found: set[int] = set()
    correct = np.zeros(len(boxes), bool)
    for i, r in regions:
        hit = _iou(r, boxes) >= iou_min if len(boxes) else np.zeros(0, bool)
        if hit.any():
            found.add(i)
        correct |= hit
    return found, correct


def score_puzzle(pz: Puzzle, boxes_a: np.ndarray, boxes_b: np.ndarray, iou_min: float = 0.5) -> dict:
    """Edits found (in either image), boxes correct (both images pooled), and boxes lying in an
    uncovered strip (false boxes that touch a strip of pixels with no counterpart)."""
    fa, ca = _hits(boxes_a, pz.edits, iou_min)
    fb, cb = _hits(boxes_b, pz.edits_b, iou_min)
    in_border = 0
    for boxes, correct, strip in ((boxes_a, ca, pz.uncovered_a), (boxes_b, cb, pz.uncovered_b)):
        for box, ok in zip(np.asarray(boxes).reshape(-1, 4).astype(int), correct):
            x1, y1, x2, y2 = box
            if not ok and strip[max(y1, 0):max(y2, y1 + 1), max(x1, 0):max(x2, x1 + 1)].any():
                in_border += 1
    n_boxes = len(boxes_a) + len(boxes_b)
    return {"edits": len(pz.edits), "found": len(fa | fb), "boxes": n_boxes, "correct": int(ca.sum() + cb.sum()),
            "recall": len(fa | fb) / max(len(pz.edits), 1),
            "precision": float(ca.sum() + cb.sum()) / n_boxes if n_boxes else 1.0, "border_boxes": in_border}


def changed_pixels(a: np.ndarray, b: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Bool map of the pixels a per-pixel diff tool marks as changed: pixelmatch's YIQ colour distance
    (its default threshold 0.1, no anti-aliasing exclusion: the fringe counts)."""
    d = a.astype(np.float64) - b.astype(np.float64)
    y = 0.29889531 * d[..., 0] + 0.58662247 * d[..., 1] + 0.11448223 * d[..., 2]
    i = 0.59597799 * d[..., 0] - 0.27417610 * d[..., 1] - 0.32180189 * d[..., 2]
    q = 0.21147017 * d[..., 0] - 0.52261711 * d[..., 1] + 0.31114694 * d[..., 2]
    delta = 0.5053 * y * y + 0.299 * i * i + 0.1957 * q * q
    return delta > 35215 * threshold * threshold


def covered_fraction(changed: np.ndarray, boxes: np.ndarray) -> float:
    """Share of the `changed` pixels that lie inside one of `boxes` (xyxy, exclusive ends)."""
    inside = np.zeros_like(changed)
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4):
        inside[int(np.floor(y1)):int(np.ceil(y2)), int(np.floor(x1)):int(np.ceil(x2))] = True
    n = int(changed.sum())
    return float((changed & inside).sum()) / n if n else 1.0
