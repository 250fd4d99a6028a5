"""From a difference map to boxes: the threshold and the regions (pixel-wise method, steps 5-6).

`otsu_threshold` picks the threshold; `group_objects` (grouping "objects") joins hysteresis
fragments into objects — by distance, colour and the images' own objects, so that neighbouring
changes stay apart; `regions_to_boxes` (grouping "components") boxes
8-connected components. Scores are the mean clipped difference over a region's pixels.
"""

from __future__ import annotations

import numpy as np

# A region with no evidence pixel (see `spotdiff.methods.difference`) must cover this much of the frame:
# JPEG ringing lights specks (≤ ~0.3 %), a low-contrast textured object lights a large area.
QUIET_REGION_FRACTION = 0.005
# Two change fragments whose mean colours (in A, in B; grey levels, RMS over the channels' pairing)
# differ by more than this are distinct changes: close neighbours stay two boxes.
DISTINCT_COLOURS = 20.0
# Fragments lying on one foreground region of A or B (see `_linked`) join up to this many
# `group_gap`s apart: the two ends of a mirrored cloud.
SAME_OBJECT_GAPS = 6
# A fragment's signature (mean colour in A and in B) is taken over at most about this many of its pixels.
SIGNATURE_SAMPLES = 256
# `_linked`: colours making up this share of a window's rim are background (within this many levels).
BACKGROUND_SHARE = 0.1
BACKGROUND_LEVELS = 24
# Distinct changes whose boxes overlap by less than this share of the smaller box stay two boxes.
SMALL_OVERLAP = 0.2


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu threshold of values in [0, 1] (values above 1 count as 1; 256 bins, by OpenCV)."""
    import cv2

    if values.size == 0:
        return 1.0
    v = np.ascontiguousarray(values, dtype=np.float32)
    v = v.reshape(1, -1) if v.ndim != 2 else v
    u8 = cv2.convertScaleAbs(v, alpha=255.0)  # one pass: |v|·255, rounded, saturated to [0, 255]
    t, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return float(t) / 255.0


def regions_to_boxes(diff: np.ndarray, binary: np.ndarray, min_area: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a binary map → (xyxy boxes, mean clipped difference per component),
    components smaller than `min_area` pixels dropped, sorted by score.

    Same result as `cv2.connectedComponentsWithStats`, ~3× faster on sparse maps: OpenCV labels
    the pixels, and the statistics are gathered over the foreground pixels only.
    """
    import cv2

    h, w = binary.shape
    b = binary.view(np.uint8) if binary.dtype == bool else binary.astype(np.uint8, copy=False)
    n, labels = cv2.connectedComponents(b, connectivity=8, ltype=cv2.CV_32S)
    if n <= 1:
        return np.zeros((0, 4)), np.zeros(0)
    fg = np.flatnonzero(b.ravel())
    lab = labels.ravel()[fg]
    area = np.bincount(lab, minlength=n).astype(np.float64)
    keep = np.flatnonzero(area >= max(min_area, 1))
    keep = keep[keep > 0]
    if keep.size == 0:
        return np.zeros((0, 4)), np.zeros(0)
    ys, xs = np.divmod(fg, w)
    x1 = np.full(n, w, np.int64)
    y1 = np.full(n, h, np.int64)
    x2 = np.zeros(n, np.int64)
    y2 = np.zeros(n, np.int64)
    np.minimum.at(x1, lab, xs)
    np.minimum.at(y1, lab, ys)
    np.maximum.at(x2, lab, xs)
    np.maximum.at(y2, lab, ys)
    sums = np.bincount(lab, weights=np.minimum(diff.ravel()[fg], 1.0), minlength=n)
    boxes = np.stack([x1[keep], y1[keep], x2[keep] + 1, y2[keep] + 1], axis=1).astype(np.float64)
    scores = sums[keep] / area[keep]
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order]


def _box_gaps(boxes: np.ndarray) -> np.ndarray:
    """Pairwise Chebyshev gap between boxes (xyxy, exclusive ends): 0 when they touch or overlap."""
    gx = np.maximum(boxes[:, None, 0], boxes[None, :, 0]) - np.minimum(boxes[:, None, 2], boxes[None, :, 2])
    gy = np.maximum(boxes[:, None, 1], boxes[None, :, 1]) - np.minimum(boxes[:, None, 3], boxes[None, :, 3])
    return np.maximum(np.maximum(gx, gy), 0)


def _signature_distance(sig: np.ndarray) -> np.ndarray:
    """Pairwise distance between change signatures (rows: mean colour in A, then mean colour in B):
    the larger of the two images' RMS colour distances."""
    c = sig.shape[1] // 2
    a, b = sig[:, :c], sig[:, c:]

    def dist(x):
        return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).mean(axis=2))

    return np.maximum(dist(a), dist(b))


def _linked(img: np.ndarray, window: tuple[int, int, int, int], probes_i: tuple[np.ndarray, np.ndarray],
            probes_j: tuple[np.ndarray, np.ndarray]) -> bool:
    """Whether two change fragments lie on one object of `img` (uint8, on the map grid): inside `window`
    (x1, y1, x2, y2), the colours that make up `BACKGROUND_SHARE` of the window's rim are background,
    the rest is foreground; the fragments are linked when one connected foreground region that does
    not cross the window (reach two sides of its rim) holds pixels of both or touches them within 2 px (`probes_*`: (ys, xs) arrays)."""
    import cv2

    x1, y1, x2, y2 = window
    crop = np.ascontiguousarray(img[y1:y2, x1:x2])
    channels = 1 if crop.ndim == 2 else crop.shape[2]
    rim = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]]).reshape(-1, channels)
    key = np.zeros(len(rim), np.int64)
    for c in range(channels):  # 16 levels a channel
        key = key * 16 + (rim[:, c] >> 4)
    counts = np.bincount(key)
    background = np.zeros(crop.shape[:2], np.uint8)
    for k in np.flatnonzero(counts >= BACKGROUND_SHARE * len(rim)):
        colour = rim[key == k].mean(axis=0)
        lo = np.clip(colour - BACKGROUND_LEVELS, 0, 255)
        hi = np.clip(colour + BACKGROUND_LEVELS, 0, 255)
        background |= cv2.inRange(crop, tuple(lo.tolist()) if channels > 1 else float(lo[0]),
                                  tuple(hi.tolist()) if channels > 1 else float(hi[0]))
    n, lab = cv2.connectedComponents((background == 0).view(np.uint8), connectivity=8)
    if n <= 1:
        return False
    # a region crossing the window (reaching two sides of the rim: a horizon line, a large object
    # around the window) links nothing; an object the window cuts on one side still counts
    sides = np.zeros(n, np.int64)
    for edge in (lab[0], lab[-1], lab[:, 0], lab[:, -1]):
        sides[np.unique(edge)] += 1
    on_rim = sides >= 2
    on_rim[0] = True

    def touched(probes):  # a fragment's pixels and those within 2 px: a mirrored end is in one image
        # only, beside the object's body that both images share
        mask = np.zeros(lab.shape, np.uint8)
        mask[probes[0] - y1, probes[1] - x1] = 1
        found = np.unique(lab[cv2.dilate(mask, np.ones((5, 5), np.uint8)).view(bool)])
        return found[~on_rim[found]]

    return bool(np.intersect1d(touched(probes_i), touched(probes_j)).size)


def _join(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components (dense group ids, one per item) of the graph on `n` items with edges `pairs` (k×2):
    union-find (the graphs here have a handful of edges; scipy's sparse setup costs more)."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs.tolist():
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.unique([root(i) for i in range(n)], return_inverse=True)[1].reshape(-1)  # dense ids


def group_objects(diff: np.ndarray, high: float, low: float, gap: int, min_area: float,
                  region: np.ndarray | None = None, evidence: np.ndarray | None = None,
                  colours: tuple[np.ndarray, np.ndarray, int] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Object-level regions of a difference map → (xyxy boxes, scores, one diagnostics dict per box).

    Rules, in order (each box's dict says which ones joined its fragments):
    - hysteresis: 8-connected regions of `diff > low` that hold a pixel `> high` (and, when
      `evidence` is given, a pixel marked there, or else cover `QUIET_REGION_FRACTION` of the
      frame) — a fragment;
    - gap: fragments within `gap` px of each other (Chebyshev, between their boxes) are one object —
      unless `colours` says they are distinct changes: (A, B, stride) are the images on the working
      frame (the map's pixel (y, x) is their (stride·y, stride·x)); a fragment's signature is its mean
      colour in A and in B, and fragments whose signatures differ by more than `DISTINCT_COLOURS`
      stay apart however close (a moved house and a ball added beside it), while fragments with the
      same signature join up to `SAME_OBJECT_GAPS` gaps apart (the two ends of a mirrored fish);
    - overlap: objects whose boxes overlap are merged, repeatedly, so no two boxes overlap — two
      distinct changes (by colour) whose boxes overlap by less than `SMALL_OVERLAP` of the smaller
      box's area stay two boxes;
    objects with fewer than `min_area` pixels are dropped. Score = mean clipped difference.
    """
    import cv2

    h, w = diff.shape
    weak = np.greater(diff, low).view(np.uint8)
    if region is not None:
        weak &= region.view(np.uint8)
    fg = np.flatnonzero(weak.ravel())
    if fg.size == 0:
        return np.zeros((0, 4)), np.zeros(0), []
    n, labels = cv2.connectedComponents(weak, connectivity=8, ltype=cv2.CV_32S)
    lab = labels.ravel()[fg]
    strong = np.zeros(n, bool)
    strong[lab[diff.ravel()[fg] > high]] = True
    if evidence is not None:
        moved = np.zeros(n, bool)
        moved[lab[evidence.ravel()[fg]]] = True
        # a low-contrast texture appearing over a large area is a change even without evidence
        moved |= np.bincount(lab, minlength=n) >= QUIET_REGION_FRACTION * h * w
        strong &= moved
    strong[0] = False
    if not strong.any():
        return np.zeros((0, 4)), np.zeros(0), []
    keep = strong[lab]
    fg, lab = fg[keep], lab[keep]
    # fragments: dense ids, boxes from the kept pixels' coordinates (few; no pass over the frame)
    present = np.bincount(lab, minlength=n) > 0
    frag = (np.cumsum(present) - 1)[lab]
    nf = int(present.sum())
    ys, xs = np.divmod(fg, w)
    fboxes = np.empty((nf, 4), np.int64)
    fboxes[:, :2] = np.iinfo(np.int64).max
    fboxes[:, 2:] = -1
    np.minimum.at(fboxes[:, 0], frag, xs)
    np.minimum.at(fboxes[:, 1], frag, ys)
    np.maximum.at(fboxes[:, 2], frag, xs)
    np.maximum.at(fboxes[:, 3], frag, ys)
    fboxes[:, 2:] += 1
    farea = np.bincount(frag, minlength=nf).astype(np.float64)
    fsums = np.bincount(frag, weights=np.minimum(diff.ravel()[fg], 1.0), minlength=nf)
    # fragments → objects
    gaps = _box_gaps(fboxes.astype(np.float64))
    near = gaps <= (gap if colours is None else SAME_OBJECT_GAPS * gap)
    np.fill_diagonal(near, False)
    sig = None
    if colours is not None and near.any():  # (no fragment near another: nothing to decide)
        ca, cb, stride = colours
        # each fragment's pixels, in order (a radix sort on 16-bit ids)
        order = np.argsort(frag.astype(np.int16) if nf < 2**15 else frag, kind="stable")
        starts = np.searchsorted(frag[order], np.arange(nf + 1))
        probes = [(ys[order[starts[k]:starts[k + 1]]], xs[order[starts[k]:starts[k + 1]]]) for k in range(nf)]
        # signatures from ≤ ~SIGNATURE_SAMPLES pixels a fragment, evenly spread over its pixels
        sorted_frag = frag[order]
        rank = np.arange(len(order)) - starts[sorted_frag]
        step = np.maximum(farea.astype(np.int64) // SIGNATURE_SAMPLES, 1)
        pick = order[rank % step[sorted_frag] == 0]
        ps, pf = (ys[pick] * stride, xs[pick] * stride), frag[pick]
        pa, pb = ca[ps].reshape(len(pick), -1), cb[ps].reshape(len(pick), -1)
        sig = np.stack([np.bincount(pf, weights=v, minlength=nf)
                        for p in (pa, pb) for v in np.ascontiguousarray(p.T, dtype=np.float64)], axis=1)
        sig /= np.bincount(pf, minlength=nf)[:, None]
        same = (_signature_distance(sig) <= DISTINCT_COLOURS) & (gaps <= gap)
        # the images on the map grid (views: every `stride`-th pixel)
        ga, gb = ca[::stride, ::stride], cb[::stride, ::stride]
        for i, j in np.argwhere(np.triu(near & ~same, 1)):
            box = np.r_[np.minimum(fboxes[i, :2], fboxes[j, :2]), np.maximum(fboxes[i, 2:], fboxes[j, 2:])]
            pad = max(2 * gap, 2)
            window = (max(int(box[0] - pad), 0), max(int(box[1] - pad), 0), min(int(box[2] + pad), w),
                      min(int(box[3] + pad), h))
            if not (_linked(ga, window, probes[i], probes[j]) or _linked(gb, window, probes[i], probes[j])):
                near[i, j] = near[j, i] = False
    np.fill_diagonal(near, False)
    obj = _join(nf, np.argwhere(near))
    obj = (np.cumsum(np.bincount(obj, minlength=nf) > 0) - 1)[obj]
    m = int(obj.max()) + 1
    boxes = _group_boxes(fboxes, obj, m)
    area = np.bincount(obj, weights=farea, minlength=m)
    sums = np.bincount(obj, weights=fsums, minlength=m)
    fragments = np.bincount(obj, minlength=m)
    osig = None
    if sig is not None:
        osig = np.stack([np.bincount(obj, weights=farea * v, minlength=m) for v in sig.T], axis=1) / area[:, None]
    big = np.flatnonzero(area >= max(min_area, 1))
    boxes, area, sums, fragments = boxes[big], area[big], sums[big], fragments[big]
    if osig is not None:
        osig = osig[big]
    members = [[k] for k in range(len(big))]
    boxes, members = _merge_overlapping(boxes, members, osig, area)
    scores = np.array([sums[mb].sum() / area[mb].sum() for mb in members]) if members else np.zeros(0)
    info = []
    for mb in members:
        frags = int(fragments[mb].sum())
        rules = (["gap"] if any(fragments[k] > 1 for k in mb) else []) + (["overlap"] if len(mb) > 1 else [])
        info.append({"fragments": frags, "pixels": int(area[mb].sum()), "merged_by": rules})
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order], [info[k] for k in order]


def _group_boxes(boxes: np.ndarray, group: np.ndarray, n: int) -> np.ndarray:
    """The n boxes (xyxy) that each enclose the `boxes` of one group (`group[k]` in [0, n))."""
    out = np.empty((n, 4), np.float64)
    out[:, :2] = np.inf
    out[:, 2:] = -np.inf
    np.minimum.at(out[:, 0], group, boxes[:, 0])
    np.minimum.at(out[:, 1], group, boxes[:, 1])
    np.maximum.at(out[:, 2], group, boxes[:, 2])
    np.maximum.at(out[:, 3], group, boxes[:, 3])
    return out


def _merge_overlapping(boxes: np.ndarray, members: list[list[int]], sig: np.ndarray | None = None,
                       area: np.ndarray | None = None) -> tuple[np.ndarray, list[list[int]]]:
    """Merge boxes (xyxy, exclusive ends) that overlap, repeating until none do (a merged box can
    reach a third one); `members` follows the merges. With signatures (`sig`, one row per box, and
    the pixel counts `area`), two distinct changes whose boxes overlap by less than `SMALL_OVERLAP`
    of the smaller box stay apart."""
    while len(boxes) > 1:
        ix = np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(boxes[:, None, 0], boxes[None, :, 0])
        iy = np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(boxes[:, None, 1], boxes[None, :, 1])
        touch = (ix > 0) & (iy > 0)
        if sig is not None:
            bar = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            small = np.clip(ix, 0, None) * np.clip(iy, 0, None) < SMALL_OVERLAP * np.minimum(bar[:, None], bar[None, :])
            touch &= ~(small & (_signature_distance(sig) > DISTINCT_COLOURS))
        np.fill_diagonal(touch, False)
        if not touch.any():
            break
        group = _join(len(boxes), np.argwhere(touch))
        n = int(group.max()) + 1
        merged = _group_boxes(boxes, group, n)
        new_members: list[list[int]] = [[] for _ in range(n)]
        for k, g in enumerate(group):
            new_members[g].extend(members[k])
        if sig is not None:
            new_area = np.bincount(group, weights=area, minlength=n)
            sig = np.stack([np.bincount(group, weights=area * v, minlength=n) for v in sig.T], axis=1) / new_area[:, None]
            area = new_area
        boxes, members = merged, new_members
    return boxes, members
