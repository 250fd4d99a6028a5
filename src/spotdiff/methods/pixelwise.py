"""The pixel-wise method, `SsimDetector`: SSIM + colour difference map → threshold → object regions → boxes.

No training needed. The steps live in their own modules: registration (`registration`), brightness
and colour matching (`photometric`), the SSIM back-ends (`ssim_map`), the difference map
(`difference`), threshold and regions (`regions`); this module holds the detector that runs them.

Pipeline, for images A and B of any sizes:

1. Working frame: A's aspect ratio, downscaled so its longer side is ≤ `SsimParams.max_side` and
   so that neither image is upsampled (a sharp image against a blown-up one differs in every
   texture); B is resized to the same working size, so different sizes and resolutions compare —
   stretched, unless the aspect ratios differ by < `SAME_SCALE_ASPECT` (B is A padded or cropped:
   same scale on both axes, top-left anchored, cropped to the frame).
2. Registration (`align`): "auto" (the default) first asks whether the pair is already aligned (ECC
   from identity on small copies, fitted where A and B agree, moves no corner by a third of a pixel:
   identity, no features needed); otherwise it estimates a homography from ORB (then SIFT) feature
   matches refined by ECC, and keeps it only when the features support it and it fits B to A better
   than no warp; otherwise identity, quietly (identical, flat or tiny images), with the reason in the
   notes. "homography" insists (ECC alone as a last resort, every fallback a warning); "none" skips.
   B is warped into A's frame; pixels outside the warped overlap take A's values and are excluded:
   the part of A with no counterpart in B is never a change (its share is `uncovered_fraction`).
   After a warp, the residual shift (`residual_px`: phase correlation between A and warped B) sets a
   match tolerance (`tolerance_px`: 1 px, 2 px past `RESIDUAL_OK_PX`): a pixel is evidence of a
   change only if nothing within the tolerance in the other image matches it (a per-pixel diff
   tool's anti-aliasing test, for the interpolation's soft edges and a fit off by a pixel), and the
   difference map is kept only within the SSIM window's reach of such a pixel.
3. Photometric normalisation (`normalize`): a robust affine colour fit (3×3 matrix + offset; grey
   images: gain + offset) maps B onto A (the changes themselves and saturated pixels are outliers of
   the fit), so exposure, contrast, white balance and saturation are not differences.
4. Difference map = max(1 − SSIM on grey, local mean colour difference / `colour_scale`). SSIM: grey
   in [0, 1] (explicit data range 1.0; on the 2-px grid the grey levels of the uint8 images, range
   255), Gaussian window (`sigma`, truncated at 3.5 σ like scikit-image), in torch (one grouped
   separable convolution, so the same code runs on a GPU) or OpenCV. The colour term is the RMS over R, G, B of the Gaussian-blurred signed difference: it
   lights flat and iso-luminant changes that SSIM, blind to a mean shift in a flat patch, leaves dark,
   and averages out anti-aliasing and JPEG noise.
5. Threshold: Otsu on the difference map (but never below `min_threshold`), or a fixed value.
6. Regions (`grouping`):
   - "objects" (default): hysteresis — pixels above `hysteresis` × threshold count when their
     8-connected region has a pixel above the threshold (faint tails of a change are covered, noise
     without a strong core is not); fragments closer than `group_gap` × the frame's longer side with
     the same mean colours in A and in B are one object (a textured object lights up along its
     texture in pieces), and so are fragments up to 6 gaps apart that lie on one foreground region
     of A or of B (a mirrored object's two ends); close fragments that are neither stay apart (a
     moved house and a ball added beside it: two changes); then boxes that overlap are merged until
     none do, except two distinct changes overlapping by under a fifth of the smaller box (one
     numbered box per object).
     Each box's `regions` entry in the diagnostics says how many fragments it holds and which rules
     joined them.
   - "components": opening then closing with an elliptic `morph_kernel`, one box per component.
   Regions smaller than `min_area_fraction` of the frame are dropped. Score = mean difference
   (clipped to [0, 1]) over the region's pixels.
7. Boxes are scaled back to A's pixels; B's boxes are the same regions mapped through the inverse
   registration and scaled to B's pixels — box i in A and box i in B are the same change.

Ignore mask: a bool array in A's pixels (True = never report). Inside it B takes A's values before
the difference and the difference is zeroed, so nothing there is ever reported.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np

from spotdiff.errors import SpotdiffError
from spotdiff.methods.base import Detector, Overlay, PairDetections
from spotdiff.methods.difference import difference_map, difference_map_blocks, unmatched_within
from spotdiff.methods.photometric import to_grey
from spotdiff.methods.regions import group_objects, otsu_threshold, regions_to_boxes
from spotdiff.methods.registration import (
    auto_homography,
    estimate_homography,
    overlap_mask,
    residual_shift,
    uncovered_fraction,
    warp_onto_a,
)
from spotdiff.methods.ssim_map import TRUNCATE, Scratch
from spotdiff.params import Params, SsimParams

ALIGNS = ("auto", "homography", "none")  # registration modes (see the module doc)
# Image sizes whose aspect ratios differ by less than this are one picture padded or cropped.
SAME_SCALE_ASPECT = 0.05
# After a warp, a pixel counts as changed only if nothing within `ssim.match_tolerance` working-frame
# px of it in the other image matches it within TOLERANCE_LEVELS grey levels (1 px when the
# registration's residual, phase correlation after the warp, is under RESIDUAL_OK_PX). Interpolating B
# softens its edges; a fit off by a fraction of a pixel lights every edge of a flat cartoon.
TOLERANCE_LEVELS = 16
RESIDUAL_OK_PX = 0.5


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    if (img.shape[1], img.shape[0]) == size:
        return img
    shrink = size[0] < img.shape[1] or size[1] < img.shape[0]
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _check_image(img: Any, name: str) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3) \
            or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise SpotdiffError(f"{name}: expected a uint8 H×W×3 RGB image, got {arr.dtype} {arr.shape}; "
                            "load it with spotdiff.imageio.load_image")
    return arr


class SsimDetector(Detector):
    """The pixel-wise SSIM detector (see the module docstring)."""

    name = "ssim"
    title = "SSIM"

    def __init__(self, params: SsimParams | None = None, device: str | None = None,
                 align: str | None = None, backend: str = "auto"):
        """`device`: torch device for the SSIM (default: CUDA when available, else CPU).
        `backend`: "torch" (grouped convolution on `device`), "opencv" (CPU SIMD filters), or
        "auto" = torch on a GPU, OpenCV on a CPU (same numbers either way, see `ssim_map_cv2`)."""
        import torch

        self.params = params or SsimParams()
        self.align = align if align is not None else self.params.align
        if self.align not in ALIGNS:
            raise SpotdiffError(f"align: unknown value {self.align!r}; use {', '.join(ALIGNS)}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if backend not in ("auto", "torch", "opencv"):
            raise SpotdiffError(f"backend: unknown value {backend!r}; use auto, torch or opencv")
        if backend == "auto":
            backend = "torch" if self.device.type != "cpu" else "opencv"
        self.backend = backend
        self._scratch = Scratch()

    @classmethod
    def build(cls, params: Params | SsimParams | None = None, *, model: Any = None, engine: str = "auto",
              device: str | None = None) -> "SsimDetector":
        """From Params (its `ssim` section) or SsimParams; `model` and `engine` are not used."""
        return cls(params.ssim if isinstance(params, Params) else params, device=device)

    # -- the Detector interface ------------------------------------------------------------------

    def display(self, dets: PairDetections, top_k: int | None = None) -> PairDetections:
        """The same boxes (one set of regions seen in both images: paired), the `top_k` best."""
        return PairDetections(dets.boxes_a, dets.scores_a, dets.boxes_b, dets.scores_b, dets.size_a,
                              dets.size_b, paired=len(dets.boxes_a) == len(dets.boxes_b)).filter(top_k=top_k)

    def settings(self) -> dict[str, Any]:
        return {"ssim": {**self.params.model_dump(), "align": self.align}}

    def summary(self) -> str:
        p = self.params
        return f"pixel-wise, no training; align {self.align}, grouping {p.grouping}, max side {p.max_side} px"

    def overlays(self, img_a: np.ndarray, img_b: np.ndarray, dets: PairDetections,
                 shown: PairDetections) -> list[Overlay]:
        """The difference map over A (from `run(keep_maps=True)`), blank outside the compared pixels."""
        diff = dets.extras.get("diff")
        if diff is None:
            return []
        return [Overlay("a", diff, "difference (1 - SSIM) on A", vmin=0.0, vmax=1.0,
                        mask=dets.extras.get("valid"))]

    def run(self, img_a: np.ndarray, img_b: np.ndarray, ignore_mask: np.ndarray | None = None,
            keep_maps: bool = False) -> PairDetections:
        """Detect, returning `PairDetections` (paired boxes) with diagnostics in `extras`
        (`align` used and `align_requested`, `homography_b_to_a_working`, `residual_px`,
        `tolerance_px`, `uncovered_fraction`, `threshold`, `grouping`,
        `regions` (per box: fragments, pixels, the rules that merged them), `working_size`, `notes`,
        `timings`; with `keep_maps` also `diff` (float32 map in the working frame) and `valid`)."""
        import cv2

        p = self.params
        t0 = time.perf_counter()
        a = _check_image(img_a, "image A")
        b = _check_image(img_b, "image B")
        ha, wa = a.shape[:2]
        hb, wb = b.shape[:2]
        if ignore_mask is not None:
            ignore_mask = np.asarray(ignore_mask, dtype=bool)
            if ignore_mask.shape != (ha, wa):
                raise SpotdiffError(f"ignore mask: shape {ignore_mask.shape[::-1]} (w×h) does not match "
                                    f"image A ({wa}×{ha}); make it the size of image A")

        # 1. working frame
        # never upsample either image: a sharp A against a blown-up B differs in every texture
        s = min(1.0, p.max_side / max(ha, wa), wb / wa, hb / ha)
        w, h = max(1, round(wa * s)), max(1, round(ha * s))
        colour = p.colour_scale > 0 and a.ndim == 3 and b.ndim == 3
        ca = _resize(a if colour else to_grey(a), (w, h))
        sx, sy = wb / wa, hb / ha
        if sx != sy and abs(sx / sy - 1) < SAME_SCALE_ASPECT:
            # Nearly the same aspect ratio: B is A padded or cropped (the inpainter pads to a multiple
            # of 8, phones crop), not stretched — same scale on both axes, top-left anchored; the
            # registration takes up any other offset. Stretching would shift the far edge by the pad.
            f = s / min(sx, sy)  # B-working pixels per B pixel
            cb = _resize(b if colour else to_grey(b), (max(w, round(wb * f)), max(h, round(hb * f))))[:h, :w]
            b_scale = (f, f)
        else:
            cb = _resize(b if colour else to_grey(b), (w, h))
            b_scale = (w / wb, h / hb)
        # grey copies for the registration and the grey-only path (the colour path works from ca, cb)
        ga = to_grey(ca) if self.align != "none" or not colour else None
        gb = to_grey(cb) if self.align != "none" or not colour else None
        ign = None
        if ignore_mask is not None and ignore_mask.any():
            ign = cv2.resize(ignore_mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        t_prep = time.perf_counter()

        # 2. registration
        notes: list[str] = []
        H = np.eye(3)
        align_used = "none"
        valid = None  # pixels B covers after the warp; None: all
        residual = tolerance = 0.0
        uncovered = 0.0
        if self.align != "none":
            if self.align == "auto":
                H, align_used, notes = auto_homography(ga, gb)
            else:
                H, align_used, notes = estimate_homography(ga, gb)
                for note in notes:
                    warnings.warn(f"ssim registration: {note}", RuntimeWarning, stacklevel=2)
            if align_used != "identity":
                cb = warp_onto_a(cb, H, (w, h))
                gb = cb if cb.ndim == 2 else (to_grey(cb) if not colour else None)
                # the SSIM window must not reach the replicated border
                valid = overlap_mask(H, (w, h), margin=int(TRUNCATE * p.sigma + 0.5) + 1)
                # A's pixels that B does not show are never a change (masked by `valid`); their area
                uncovered = uncovered_fraction(H, (w, h))
                residual = residual_shift(ga, gb if gb is not None else to_grey(cb), valid)
                tolerance = min(1, p.match_tolerance) if residual < RESIDUAL_OK_PX else p.match_tolerance
        t_align = time.perf_counter()

        # 3-4. normalisation and difference map (on the map grid: every pixel, or every 2nd one)
        if valid is None:
            same = ign if ign is not None else np.zeros((h, w), bool)
        else:
            same = ~valid if ign is None else (~valid | ign)
        masked = ign is not None or bool(same.any())
        region = ~same
        stride = self._map_stride(w, h)
        if stride == 1:
            diff, evidence = difference_map(ga, gb, region, ca if colour else None, cb if colour else None,
                                            same if masked else None, p, self.backend, self.device)
            region_m = region
        else:
            same_m = None
            if masked:  # a block with any pixel outside the overlap (or ignored) is outside
                same_m = cv2.resize(same.astype(np.float32), ((w + 1) // 2, (h + 1) // 2),
                                    interpolation=cv2.INTER_AREA) > 0
            diff, evidence = difference_map_blocks(ga, gb, region, ca if colour else None,
                                                   cb if colour else None, same if masked else None, same_m,
                                                   p, self._scratch)
            region_m = ~same_m if masked else None
        if tolerance:
            # A pixel that some neighbour in the other image matches is no evidence of a change, and
            # the difference map is kept only within the SSIM window's reach of an unmatched pixel:
            # the halos a residual misalignment leaves along every edge go, a change keeps its extent.
            changed = unmatched_within(ca if colour else ga, cb if colour else gb, int(tolerance), region,
                                       TOLERANCE_LEVELS).view(np.uint8)
            reach = 2 * int(TRUNCATE * p.sigma + 0.5) + 1
            near = cv2.dilate(changed, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (reach, reach)))
            if stride > 1:  # a block is (near) changed when any of its pixels is
                size_m = (diff.shape[1], diff.shape[0])
                changed = cv2.resize(changed, size_m, interpolation=cv2.INTER_AREA)
                near = cv2.resize(near, size_m, interpolation=cv2.INTER_AREA)
            diff[near == 0] = 0.0
            if evidence is not None:
                evidence &= changed > 0
        if masked:
            diff[~region_m] = 0.0
        mh, mw = diff.shape
        t_ssim = time.perf_counter()

        # 5. threshold
        if p.threshold == "otsu":
            thr = max(otsu_threshold(diff[region_m] if masked else diff), float(p.min_threshold))
        else:
            thr = float(p.threshold)
        min_area = p.min_area_fraction * mw * mh

        # 6. regions (on the map grid; its pixels are stride × stride working-frame pixels)
        regions_info: list[dict] = []
        if p.grouping == "objects":
            gap = int(round(p.group_gap * max(mw, mh)))
            boxes_w, scores, regions_info = group_objects(diff, thr, p.hysteresis * thr, gap, min_area,
                                                          region_m if masked else None, evidence,
                                                          colours=(ca, cb, stride))
            for r in regions_info:
                r["pixels"] *= stride * stride
        else:
            binary = np.greater(diff, thr).view(np.uint8)  # bool → 0/1 bytes, no copy
            if masked:
                binary &= region_m.view(np.uint8)
            ksize = p.morph_kernel if stride == 1 else (p.morph_kernel + 1) // 2
            if ksize > 1:
                kern = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (ksize, ksize))
                binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kern)
                binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, kern)
                if masked:
                    binary &= region_m.view(np.uint8)
            boxes_w, scores = regions_to_boxes(diff, binary, min_area)
        if stride > 1:
            boxes_w = boxes_w * stride
            boxes_w[:, [0, 2]] = boxes_w[:, [0, 2]].clip(0, w)
            boxes_w[:, [1, 3]] = boxes_w[:, [1, 3]].clip(0, h)
        t_cc = time.perf_counter()

        # 7. back to each image's pixels
        boxes_a = boxes_w * np.array([wa / w, ha / h, wa / w, ha / h])
        boxes_b = self._map_to_b(boxes_w, H if align_used not in ("none", "identity") else None, (w, h),
                                 (wb, hb), b_scale)
        boxes_a[:, [0, 2]] = boxes_a[:, [0, 2]].clip(0, wa)
        boxes_a[:, [1, 3]] = boxes_a[:, [1, 3]].clip(0, ha)
        extras: dict[str, Any] = {
            "align": align_used,
            "align_requested": self.align,
            "homography_b_to_a_working": H.tolist(),
            "threshold": thr,
            "grouping": p.grouping,
            "working_size": [w, h],
            "map_stride": stride,
            # registration's leftovers: the residual shift (working px, phase correlation after the
            # warp), the match tolerance it called for (px; 0: none, no warp), and the share of A's
            # frame that B does not show (never reported as a change)
            "residual_px": round(residual, 3),
            "tolerance_px": int(tolerance),
            "uncovered_fraction": round(uncovered, 5),
            "notes": notes,
            "device": str(self.device) if self.backend == "torch" else "cpu",
            "backend": self.backend,
            "timings": {"prepare_s": t_prep - t0, "align_s": t_align - t_prep, "ssim_s": t_ssim - t_align,
                        "boxes_s": t_cc - t_ssim},
        }
        if regions_info:
            extras["regions"] = [{"label": i + 1, **r} for i, r in enumerate(regions_info)]
        if keep_maps:
            extras["diff"] = diff if stride == 1 else cv2.resize(diff, (w, h), interpolation=cv2.INTER_LINEAR)
            extras["valid"] = region
        return PairDetections(boxes_a, scores, boxes_b, scores.copy(), (wa, ha), (wb, hb), paired=True,
                              extras=extras)

    # -- internals -----------------------------------------------------------------------------

    def _map_stride(self, w: int, h: int) -> int:
        """2 (difference map on every 2nd pixel, `difference_map_blocks`) for frames longer than
        `map_side` on the OpenCV backend, else 1. pyrDown's binomial window is σ = 1: a narrower
        SSIM window cannot be built on it."""
        p = self.params
        big = p.map_side > 0 and max(w, h) > p.map_side and min(w, h) >= 32
        return 2 if big and self.backend == "opencv" and p.sigma >= 1.0 else 1

    @staticmethod
    def _map_to_b(boxes_w: np.ndarray, H: np.ndarray | None, work: tuple[int, int],
                  size_b: tuple[int, int], b_scale: tuple[float, float] | None = None) -> np.ndarray:
        """Working-frame boxes → B's pixels: through H⁻¹ (B's working frame), then divided by
        `b_scale` (B-working pixels per B pixel on x and y; default: stretched to the frame)."""
        import cv2

        w, h = work
        wb, hb = size_b
        if len(boxes_w) == 0:
            return np.zeros((0, 4))
        if H is None:
            out = boxes_w.copy()
        else:
            x1, y1, x2, y2 = boxes_w.T
            corners = np.stack([np.stack([x1, y1], 1), np.stack([x2, y1], 1),
                                np.stack([x2, y2], 1), np.stack([x1, y2], 1)], axis=1)  # N×4×2
            pts = cv2.perspectiveTransform(corners.reshape(-1, 1, 2).astype(np.float64),
                                           np.linalg.inv(H)).reshape(-1, 4, 2)
            out = np.concatenate([pts.min(axis=1), pts.max(axis=1)], axis=1)
            out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
            out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
        fx, fy = b_scale if b_scale is not None else (w / wb, h / hb)
        out = out / np.array([fx, fy, fx, fy])
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, wb)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, hb)
        return out
