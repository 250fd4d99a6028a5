"""The Detector interface both methods implement, and their result type `PairDetections`.

A detector is built by `spotdiff.methods.build_detector(name, params, ...)` (the registry of
methods); callers (`spotdiff detect`, the evaluate stage) use only this interface, never a method's
name: which boxes to show (`display`), what to say about the method (`title`, `reference`,
`settings`, `summary`) and which maps to draw (`overlays`) are each method's own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np

from spotdiff.boxes import box_areas, iou_matrix

Result = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # boxes_a, scores_a, boxes_b, scores_b


def _as_boxes(b: Any) -> np.ndarray:
    return np.asarray(b, dtype=np.float64).reshape(-1, 4)


def _as_scores(s: Any) -> np.ndarray:
    return np.asarray(s, dtype=np.float64).reshape(-1)


def map_boxes(boxes: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Boxes xyxy carried by the homography H: the bounding box of each box's four mapped corners."""
    boxes = _as_boxes(boxes)
    if not len(boxes):
        return boxes
    x1, y1, x2, y2 = boxes.T
    corners = np.stack([np.stack([x1, y1], 1), np.stack([x2, y1], 1), np.stack([x1, y2], 1),
                        np.stack([x2, y2], 1)], 1)  # N×4×2
    pts = np.concatenate([corners, np.ones((*corners.shape[:2], 1))], 2) @ np.asarray(H, np.float64).T
    xy = pts[..., :2] / np.where(np.abs(pts[..., 2:]) < 1e-12, 1e-12, pts[..., 2:])
    return np.concatenate([xy.min(1), xy.max(1)], 1)


def pair_labels(boxes_a: np.ndarray, boxes_b: np.ndarray, size_a: tuple[int, int],
                size_b: tuple[int, int], iou_threshold: float = 0.3,
                a_to_b: np.ndarray | None = None) -> tuple[list[int], list[int]]:
    """Number the boxes 1.. so that the same change carries the same number in both images.

    With `a_to_b` (a homography from A's pixels to B's, e.g. a registration estimate) A's boxes are
    carried into B and compared there; without it, each image's boxes are divided by its own size.
    Boxes are then matched one to one (Hungarian, highest total IoU), a match needing IoU ≥
    `iou_threshold`; unmatched boxes get numbers of their own.
    """
    from scipy.optimize import linear_sum_assignment

    if a_to_b is not None:
        a = map_boxes(boxes_a, a_to_b) / np.array([size_b[0], size_b[1]] * 2, dtype=np.float64)
    else:
        a = _as_boxes(boxes_a) / np.array([size_a[0], size_a[1]] * 2, dtype=np.float64)
    b = _as_boxes(boxes_b) / np.array([size_b[0], size_b[1]] * 2, dtype=np.float64)
    match_of_a: dict[int, int] = {}
    if len(a) and len(b):
        iou = iou_matrix(a, b)
        rows, cols = linear_sum_assignment(-iou)
        match_of_a = {int(i): int(j) for i, j in zip(rows, cols) if iou[i, j] >= iou_threshold}
    labels_a = list(range(1, len(a) + 1))
    labels_b = [0] * len(b)
    for i, j in match_of_a.items():
        labels_b[j] = labels_a[i]
    n = len(a)
    for j in range(len(b)):
        if labels_b[j] == 0:
            n += 1
            labels_b[j] = n
    return labels_a, labels_b


@dataclass
class PairDetections:
    """Boxes and scores for both images of a pair, in each image's own pixels.

    `paired=True` means box i in A and box i in B are the same change (the pixel-wise method maps
    one set of regions into both images); `labels_*` are the display numbers (same number = same
    change), from `pair_labels` when not paired, with `a_to_b` (A's pixels → B's, when the detector
    estimated one) carrying A's boxes into B first. `extras` holds method-specific diagnostics
    (difference map, homography, notes).
    """

    boxes_a: np.ndarray
    scores_a: np.ndarray
    boxes_b: np.ndarray
    scores_b: np.ndarray
    size_a: tuple[int, int]  # (width, height)
    size_b: tuple[int, int]
    paired: bool = False
    labels_a: list[int] = field(default_factory=list)
    labels_b: list[int] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    a_to_b: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes_a, self.boxes_b = _as_boxes(self.boxes_a), _as_boxes(self.boxes_b)
        self.scores_a, self.scores_b = _as_scores(self.scores_a), _as_scores(self.scores_b)
        if not self.labels_a and not self.labels_b:
            self.relabel()

    @classmethod
    def from_tuple(cls, result: tuple, size_a: tuple[int, int], size_b: tuple[int, int],
                   paired: bool = False, extras: dict | None = None,
                   a_to_b: np.ndarray | None = None) -> "PairDetections":
        ba, sa, bb, sb = result
        return cls(ba, sa, bb, sb, tuple(size_a), tuple(size_b), paired=paired, extras=extras or {},
                   a_to_b=a_to_b)

    def as_tuple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.boxes_a, self.scores_a, self.boxes_b, self.scores_b

    def relabel(self) -> None:
        if self.paired and len(self.boxes_a) == len(self.boxes_b):
            self.labels_a = list(range(1, len(self.boxes_a) + 1))
            self.labels_b = list(self.labels_a)
        else:
            self.labels_a, self.labels_b = pair_labels(self.boxes_a, self.boxes_b, self.size_a, self.size_b,
                                                       a_to_b=self.a_to_b)

    def _select(self, keep_a: np.ndarray, keep_b: np.ndarray) -> None:
        self.boxes_a, self.scores_a = self.boxes_a[keep_a], self.scores_a[keep_a]
        self.boxes_b, self.scores_b = self.boxes_b[keep_b], self.scores_b[keep_b]
        self.relabel()

    def filter(self, top_k: int | None = None, min_score: float | None = None) -> "PairDetections":
        """Keep boxes with score ≥ min_score, then the top_k highest per image (in place; returns self)."""
        def keep(scores: np.ndarray) -> np.ndarray:
            idx = np.argsort(-scores, kind="stable")
            if min_score is not None:
                idx = idx[scores[idx] >= min_score]
            if top_k is not None:
                idx = idx[:top_k]
            return idx

        if self.paired and len(self.boxes_a) == len(self.boxes_b):
            k = keep(self.scores_a)
            self._select(k, k)
        else:
            self._select(keep(self.scores_a), keep(self.scores_b))
        return self

    def drop_ignored(self, ignore_mask: np.ndarray | None, max_fraction: float = 0.5) -> "PairDetections":
        """Drop boxes of A that lie mostly (> max_fraction of their pixels) inside the ignore mask (A's
        pixels), in place; returns self.

        The ignore-mask rule of detectors that cannot take a mask into their computation (the learned
        one); B boxes paired with a dropped A box go too, unpaired B boxes are compared with the mask
        scaled to B's size. A box thinner than a pixel is judged by the pixel it lies on.
        """
        if ignore_mask is None or not ignore_mask.any():
            return self

        def inside(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
            h, w = ignore_mask.shape
            sx, sy = w / size[0], h / size[1]
            out = np.zeros(len(boxes), dtype=bool)
            for i, (x1, y1, x2, y2) in enumerate(boxes):
                xa, ya = int(np.floor(x1 * sx)), int(np.floor(y1 * sy))
                xb = max(int(np.ceil(x2 * sx)), xa + 1)
                yb = max(int(np.ceil(y2 * sy)), ya + 1)
                region = ignore_mask[max(ya, 0):max(yb, 0), max(xa, 0):max(xb, 0)]
                out[i] = region.size > 0 and region.mean() > max_fraction
            return out

        drop_a = inside(self.boxes_a, self.size_a)
        if self.paired and len(self.boxes_a) == len(self.boxes_b):
            self._select(~drop_a, ~drop_a)
        else:
            self._select(~drop_a, ~inside(self.boxes_b, self.size_b))
        return self

    def image_json(self, which: str, path: str = "") -> dict[str, Any]:
        boxes, scores, size, labels = ((self.boxes_a, self.scores_a, self.size_a, self.labels_a)
                                       if which == "a" else
                                       (self.boxes_b, self.scores_b, self.size_b, self.labels_b))
        return {
            "path": str(path),
            "width": int(size[0]),
            "height": int(size[1]),
            "boxes": [[round(float(v), 2) for v in box] for box in boxes],
            "scores": [round(float(s), 6) for s in scores],
            "labels": [int(x) for x in labels],
        }

    def to_json(self, path_a: str = "", path_b: str = "") -> dict[str, Any]:
        """`{"images": [A, B], "paired": bool}`, each image `{path, width, height, boxes, scores, labels}`;
        `a_to_b` (the homography the labels were matched with) when there is one."""
        out = {"images": [self.image_json("a", path_a), self.image_json("b", path_b)], "paired": bool(self.paired)}
        if self.a_to_b is not None:
            out["a_to_b"] = [[round(float(v), 6) for v in row] for row in np.asarray(self.a_to_b)]
        return out

    def __len__(self) -> int:
        return max(len(self.boxes_a), len(self.boxes_b))


@dataclass(frozen=True)
class Overlay:
    """A map to blend over one image of the pair (extra tiles of `spotdiff detect`'s panel)."""

    image: str  # "a" or "b": the image it is drawn over
    heat: np.ndarray  # any size; scaled to the image
    caption: str
    vmin: float | None = None  # colour scale; None: the map's own min / max
    vmax: float | None = None
    mask: np.ndarray | None = None  # False: the image shows through


class Detector(ABC):
    """Finds the changes between two images.

    Images are numpy uint8 H×W×3 RGB (any sizes, A and B may differ); the ignore mask is a bool
    array in image A's pixels (True = never report), applied by the detector itself, once, by its
    own rule. Boxes are float xyxy (x2/y2 exclusive) in each image's own pixels, sorted by score,
    highest first.
    """

    name: ClassVar[str]  # the registry's key, e.g. "ssim"
    title: ClassVar[str]  # for people, e.g. "SSIM"
    uses_model: ClassVar[bool] = False  # needs a trained model (`build(model=...)`)
    display_rule: ClassVar[str | None] = None  # how `display` thins the boxes, e.g. "after NMS"

    @classmethod
    @abstractmethod
    def build(cls, params: Any, *, model: Any = None, engine: str = "auto",
              device: str | None = None) -> "Detector":
        """The detector for `params` (Params or the method's own section); see `build_detector`."""

    @abstractmethod
    def run(self, img_a: np.ndarray, img_b: np.ndarray, ignore_mask: np.ndarray | None = None,
            keep_maps: bool = False) -> "PairDetections":
        """Detect on one pair → PairDetections (diagnostics in `extras`; maps too with `keep_maps`)."""

    def detect(self, img_a: np.ndarray, img_b: np.ndarray, ignore_mask: np.ndarray | None = None) -> Result:
        """Detect on one pair → (boxes_a, scores_a, boxes_b, scores_b)."""
        return self.run(img_a, img_b, ignore_mask).as_tuple()

    def detect_batch(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[Result]:
        """`detect` on many (A, B) pairs, no ignore mask; a method may batch them."""
        return [self.detect(a, b) for a, b in pairs]

    @abstractmethod
    def display(self, dets: "PairDetections", top_k: int | None = None) -> "PairDetections":
        """The boxes to draw for people (a new PairDetections; `dets` is left alone): at most `top_k`
        per image (None: the method's default), by the method's own rule (`display_rule`)."""

    @property
    def reference(self) -> str | None:
        """The model reference the detector was built from (a path or an MLflow URI), or None."""
        return None

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """What the detector was built with, JSON-ready (the `settings` of `spotdiff detect`'s report)."""

    @abstractmethod
    def summary(self) -> str:
        """One line for people: the model's configuration or the method's main settings."""

    def overlays(self, img_a: np.ndarray, img_b: np.ndarray, dets: "PairDetections",
                 shown: "PairDetections") -> list[Overlay]:
        """Maps worth drawing next to the boxed images (`dets` from `run(keep_maps=True)`, `shown` from
        `display`); none by default."""
        return []


__all__ = ["Detector", "Overlay", "PairDetections", "Result", "box_areas", "map_boxes", "pair_labels"]
