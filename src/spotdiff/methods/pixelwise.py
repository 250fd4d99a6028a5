"""The pixel-wise method (DESIGN §5): SSIM difference map → threshold → morphology → boxes.

Pipeline, for images A and B of any sizes:

1. Working frame: A's aspect ratio, downscaled so its longer side is ≤ `SsimParams.max_side` and
   so that neither image is upsampled (a sharp image against a blown-up one differs in every
   texture); B is resized to the same working size, so different sizes and resolutions compare.
2. Optional registration (`align="homography"`): ORB features + RANSAC homography (SIFT when ORB
   finds too few inliers, then ECC, then identity — each fallback is a warning and a note in the
   result). B is warped into A's frame; pixels outside the warped overlap take A's values, so they
   never differ, and are excluded.
3. Photometric normalisation (`normalize`): a robust linear fit maps B's grey levels onto A's
   (the changes themselves and saturated pixels are outliers of the fit), so a global brightness /
   contrast change is not a difference.
4. SSIM on grey images in [0, 1] (explicit data range 1.0), Gaussian window (`sigma`, truncated at
   3.5 σ like scikit-image), computed in torch: the five filterings μx, μy, E[x²], E[y²], E[xy] run
   as one grouped separable convolution, so the same code runs on a GPU. Difference = 1 − SSIM.
5. Threshold: Otsu on the difference map (but never below `min_threshold`), or a fixed value.
6. Morphology: opening then closing with an elliptic `morph_kernel` (0 = none).
7. Connected components (8-connected, OpenCV) → boxes; components smaller than `min_area_fraction` of the
   frame are dropped. Score = mean difference (clipped to [0, 1]) over the component's pixels.
8. Boxes are scaled back to A's pixels; B's boxes are the same regions mapped through the inverse
   registration and scaled to B's pixels — box i in A and box i in B are the same change.

Ignore mask: a bool array in A's pixels (True = never report). Inside it B takes A's values before
SSIM and the difference is zeroed, so nothing there is ever reported.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np

from spotdiff.errors import SpotdiffError
from spotdiff.methods.base import PairDetections
from spotdiff.params import SsimParams

TRUNCATE = 3.5  # Gaussian window radius in sigmas (scikit-image's default)
MIN_INLIERS = 12


# ---------------------------------------------------------------- SSIM in torch


def gaussian_kernel1d(sigma: float, truncate: float = TRUNCATE):
    import torch

    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _symmetric_pad(t, r: int):
    """Half-sample symmetric padding (d c b a | a b c d), i.e. scipy's / OpenCV's "reflect"."""
    import torch

    h, w = t.shape[-2:]
    if r > min(h, w):  # tiny images: clamp instead
        import torch.nn.functional as F
        return F.pad(t, (r, r, r, r), mode="replicate")
    t = torch.cat([t[..., :, :r].flip(-1), t, t[..., :, w - r:].flip(-1)], dim=-1)
    return torch.cat([t[..., :r, :].flip(-2), t, t[..., h - r:, :].flip(-2)], dim=-2)


def _ssim_from_moments(mx, my, exx, eyy, exy, data_range: float):
    """SSIM from the five filtered moments (works on torch tensors and numpy arrays alike)."""
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mxy = mx * my
    mx2 = mx * mx
    my2 = my * my
    num = (2 * mxy + c1) * (2 * (exy - mxy) + c2)
    den = (mx2 + my2 + c1) * ((exx - mx2) + (eyy - my2) + c2)
    return num / den


def ssim_map(x, y, sigma: float = 1.5, data_range: float = 1.0, truncate: float = TRUNCATE):
    """Per-pixel SSIM of two N×1×H×W float tensors (same device), Gaussian window, population covariance.

    The five local statistics (μx, μy, E[x²], E[y²], E[xy]) are filtered in one grouped separable
    convolution over an N×5×H×W stack. Borders are reflected like scikit-image (scipy "reflect").
    """
    import torch
    import torch.nn.functional as F

    k = gaussian_kernel1d(sigma, truncate).to(device=x.device, dtype=x.dtype)
    r = (k.numel() - 1) // 2
    stack = _symmetric_pad(torch.cat([x, y, x * x, y * y, x * y], dim=1), r)
    if stack.device.type == "cpu":  # the CPU depthwise kernels are much faster channels-last
        stack = stack.contiguous(memory_format=torch.channels_last)
    kh = k.view(1, 1, 1, -1).expand(5, 1, 1, -1).contiguous()
    kv = k.view(1, 1, -1, 1).expand(5, 1, -1, 1).contiguous()
    f = F.conv2d(F.conv2d(stack, kh, groups=5), kv, groups=5)
    return _ssim_from_moments(*f.unbind(dim=1), data_range=data_range).unsqueeze(1)


def ssim_map_cv2(x: np.ndarray, y: np.ndarray, sigma: float = 1.5, data_range: float = 1.0,
                 truncate: float = TRUNCATE) -> np.ndarray:
    """The same SSIM map as `ssim_map` for two H×W float32 numpy arrays, filtered with OpenCV.

    The CPU fast path: OpenCV's SIMD separable filter is ~10× faster than torch's depthwise
    convolution on a CPU. Same kernel, same border rule, same formula.
    """
    import cv2

    k = gaussian_kernel1d(sigma, truncate).numpy().astype(np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.float32)

    def blur(img: np.ndarray) -> np.ndarray:
        return cv2.sepFilter2D(img, cv2.CV_32F, k, k, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    exx, eyy, exy = blur(x * x), blur(y * y), blur(x * y)
    # `_ssim_from_moments`, in place: these maps are memory-bound, temporaries cost as much as maths
    c1 = np.float32((0.01 * data_range) ** 2)
    c2 = np.float32((0.03 * data_range) ** 2)
    num = mx * my                       # μxμy
    exy -= num; exy *= 2; exy += c2     # 2σxy + C2
    num *= 2; num += c1                 # 2μxμy + C1
    num *= exy                          # numerator
    mx *= mx; my *= my                  # μx², μy²
    exx -= mx; exx += eyy; exx -= my; exx += c2   # σx² + σy² + C2
    mx += my; mx += c1                  # μx² + μy² + C1
    mx *= exx                           # denominator
    num /= mx
    return num


# ---------------------------------------------------------------- registration


def _features_homography(a: np.ndarray, b: np.ndarray, kind: str) -> tuple[np.ndarray | None, int]:
    """Homography mapping B's pixels onto A's (grey uint8 images) from feature matches, and #inliers."""
    import cv2

    if kind == "orb":
        det = cv2.ORB_create(nfeatures=4000, fastThreshold=10)
        norm = cv2.NORM_HAMMING
    else:
        det = cv2.SIFT_create(nfeatures=4000)
        norm = cv2.NORM_L2
    ka, da = det.detectAndCompute(a, None)
    kb, db = det.detectAndCompute(b, None)
    if da is None or db is None or len(ka) < 4 or len(kb) < 4:
        return None, 0
    matcher = cv2.BFMatcher(norm)
    good = []
    for pair in matcher.knnMatch(db, da, k=2):
        if len(pair) == 2 and pair[0].distance < 0.8 * pair[1].distance:
            good.append(pair[0])
    if len(good) < MIN_INLIERS:
        return None, len(good)
    src = np.float32([kb[m.queryIdx].pt for m in good]).reshape(-1, 1, 2)
    dst = np.float32([ka[m.trainIdx].pt for m in good]).reshape(-1, 1, 2)
    H, inl = cv2.findHomography(src, dst, cv2.RANSAC, 3.0)
    n = int(inl.sum()) if inl is not None else 0
    return (H if n >= MIN_INLIERS else None), n


def _ecc_homography(a: np.ndarray, b: np.ndarray, init: np.ndarray | None = None,
                    max_side: int = 256, iterations: int = 100) -> np.ndarray | None:
    """ECC on ≤`max_side`-px copies, starting from `init` (B→A) or identity.

    Returns the homography mapping B's pixels onto A's, or None when ECC fails.
    """
    import cv2

    s = min(1.0, max_side / max(a.shape))
    size = (max(8, round(a.shape[1] * s)), max(8, round(a.shape[0] * s)))
    sx, sy = a.shape[1] / size[0], a.shape[0] / size[1]
    S = np.diag([sx, sy, 1.0])
    sa = cv2.resize(a, size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    sb = cv2.resize(b, size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    warp = np.eye(3, dtype=np.float32)
    if init is not None:  # ECC's warp maps A's pixels to B's, at the reduced size
        warp = (np.linalg.inv(S) @ np.linalg.inv(init) @ S).astype(np.float32)
        warp /= warp[2, 2]
    try:
        _, warp = cv2.findTransformECC(sa, sb, warp, cv2.MOTION_HOMOGRAPHY,
                                       (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, 1e-6),
                                       None, 3)
    except cv2.error:
        return None
    w_full = S @ warp.astype(np.float64) @ np.linalg.inv(S)  # maps A's pixels to B's
    try:
        H = np.linalg.inv(w_full)
    except np.linalg.LinAlgError:
        return None
    return H / H[2, 2]


def _plausible(H: np.ndarray | None, w: int, h: int) -> bool:
    """Reject degenerate homographies: near-singular, mirrored, wild scale, or a tiny overlap."""
    import cv2

    if H is None or not np.all(np.isfinite(H)):
        return False
    H = H / H[2, 2]
    det = np.linalg.det(H[:2, :2])
    if not (0.25 < det < 4.0):
        return False
    corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]]).reshape(-1, 1, 2)
    warped = cv2.perspectiveTransform(corners, H).reshape(-1, 2)
    area = abs(cv2.contourArea(warped.astype(np.float32)))
    return 0.25 * w * h < area < 4.0 * w * h and cv2.isContourConvex(warped.astype(np.float32))


def _corner_shift(H1: np.ndarray, H2: np.ndarray, w: int, h: int) -> float:
    """Largest distance between the image corners mapped by two homographies."""
    import cv2

    corners = np.float64([[0, 0], [w, 0], [w, h], [0, h]]).reshape(-1, 1, 2)
    p1 = cv2.perspectiveTransform(corners, H1)
    p2 = cv2.perspectiveTransform(corners, H2)
    return float(np.abs(p1 - p2).max())


def estimate_homography(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, str, list[str]]:
    """Homography (3×3, B pixels → A pixels) between two same-size grey uint8 images.

    Returns (H, method, notes); method is "orb+ecc", "sift+ecc" (features, refined by ECC), "orb",
    "sift", "ecc" or "identity" (with a note each time a fallback was needed).
    """
    notes: list[str] = []
    h, w = a.shape
    for kind in ("orb", "sift"):
        try:
            H, n = _features_homography(a, b, kind)
        except Exception as exc:  # cv2 without SIFT, odd images
            H, n = None, 0
            notes.append(f"{kind} failed ({type(exc).__name__})")
        if _plausible(H, w, h):
            H = H / H[2, 2]
            # Feature positions are only pixel-accurate; ECC from there makes it sub-pixel.
            refined = _ecc_homography(a, b, init=H, max_side=512, iterations=50)
            if _plausible(refined, w, h) and _corner_shift(refined, H, w, h) < 0.05 * max(w, h):
                return refined, kind + "+ecc", notes
            return H, kind, notes
        if n < MIN_INLIERS:
            notes.append(f"{kind}: too few consistent matches ({n} inliers, need {MIN_INLIERS})")
        else:
            notes.append(f"{kind}: {n} inliers, but their homography is implausible (extreme warp)")
    H = _ecc_homography(a, b)
    if _plausible(H, w, h):
        return H / H[2, 2], "ecc", notes
    notes.append("ecc did not converge; comparing without registration")
    return np.eye(3), "identity", notes


# ---------------------------------------------------------------- detector


def _grey(img: np.ndarray) -> np.ndarray:
    import cv2

    if img.ndim == 2:
        return img
    return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)


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


def match_brightness(x: np.ndarray, y: np.ndarray, region: np.ndarray, iterations: int = 4) -> np.ndarray:
    """Map grey image `y` onto `x`'s brightness and contrast (both float32 in [0, 1]) over `region`.

    A robust linear fit x ≈ g·y + o: start from a pure offset (median of x − y), then refit by least
    squares on the inliers (residual within 3 robust σ, at least 2 grey levels), so the changes we
    are looking for and clipped (saturated) pixels do not bend the fit. Without enough contrast among
    the inliers only the offset is used; the gain is kept within [0.5, 2].
    """
    step = max(1, int(np.ceil(np.sqrt(x.size / 60_000))))  # fit on ≤ ~60k samples
    xs, ys = x[::step, ::step], y[::step, ::step]
    keep = (xs > 1.5 / 255) & (xs < 253.5 / 255) & (ys > 1.5 / 255) & (ys < 253.5 / 255)
    if not region.all():
        keep &= region[::step, ::step]
    xs, ys = xs[keep].astype(np.float64), ys[keep].astype(np.float64)
    if xs.size < 16:
        return y
    g, o = 1.0, float(np.median(xs - ys))
    for _ in range(iterations):
        r = xs - (g * ys + o)
        mad = float(np.median(np.abs(r - np.median(r))))
        inl = np.abs(r) <= max(3 * 1.4826 * mad, 2 / 255)
        if inl.sum() < 16:
            break
        xi, yi = xs[inl], ys[inl]
        if yi.std() > 4 / 255:
            g = float(np.clip(np.cov(xi, yi, bias=True)[0, 1] / yi.var(), 0.5, 2.0))
        o = float(xi.mean() - g * yi.mean())
    if abs(g - 1.0) < 1e-3 and abs(o) < 0.5 / 255:
        return y
    return y * np.float32(g) + np.float32(o)


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


class SsimDetector:
    """The pixel-wise SSIM detector (see the module docstring)."""

    name = "ssim"

    def __init__(self, params: SsimParams | None = None, device: str | None = None,
                 align: str | None = None, backend: str = "auto"):
        """`device`: torch device for the SSIM (default: CUDA when available, else CPU).
        `backend`: "torch" (grouped convolution on `device`), "opencv" (CPU SIMD filters), or
        "auto" = torch on a GPU, OpenCV on a CPU (same numbers either way, see `ssim_map_cv2`)."""
        import torch

        self.params = params or SsimParams()
        self.align = align if align is not None else self.params.align
        if self.align not in ("none", "homography"):
            raise SpotdiffError(f"align: unknown value {self.align!r}; use none or homography")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if backend not in ("auto", "torch", "opencv"):
            raise SpotdiffError(f"backend: unknown value {backend!r}; use auto, torch or opencv")
        if backend == "auto":
            backend = "torch" if self.device.type != "cpu" else "opencv"
        self.backend = backend

    # -- public API ----------------------------------------------------------------------------

    def detect(self, img_a: np.ndarray, img_b: np.ndarray, ignore_mask: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.run(img_a, img_b, ignore_mask).as_tuple()

    def run(self, img_a: np.ndarray, img_b: np.ndarray, ignore_mask: np.ndarray | None = None,
            keep_maps: bool = False) -> PairDetections:
        """Detect, returning `PairDetections` (paired boxes) with diagnostics in `extras`
        (`align`, `homography`, `threshold`, `working_size`, `notes`, `timings`; with `keep_maps`
        also `diff` (float32 map in the working frame) and `valid`)."""
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
        ga = _resize(_grey(a), (w, h))
        gb = _resize(_grey(b), (w, h))
        ign = None
        if ignore_mask is not None and ignore_mask.any():
            ign = cv2.resize(ignore_mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        t_prep = time.perf_counter()

        # 2. registration
        notes: list[str] = []
        H = np.eye(3)
        align_used = "none"
        valid = np.ones((h, w), dtype=bool)
        if self.align == "homography":
            H, align_used, notes = estimate_homography(ga, gb)
            if align_used != "identity":
                # replicate, not black: edge pixels must not blend with an invented border
                gb = cv2.warpPerspective(gb, H, (w, h), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_REPLICATE)
                inside = cv2.warpPerspective(np.full((h, w), 255, np.uint8), H, (w, h),
                                             flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                             borderValue=0)
                inside = np.where(inside >= 254, 255, 0).astype(np.uint8)
                r = int(TRUNCATE * p.sigma + 0.5) + 1
                inside = cv2.erode(inside, np.ones((2 * r + 1, 2 * r + 1), np.uint8))
                valid = inside > 0
            for note in notes:
                warnings.warn(f"ssim registration: {note}", RuntimeWarning, stacklevel=2)
        t_align = time.perf_counter()

        # 3-4. normalisation and SSIM
        same = ~valid if ign is None else (~valid | ign)
        masked = bool(same.any())
        region = ~same
        if masked:
            gb = np.where(same, ga, gb)
        diff = self._difference(ga, gb, region)
        if masked:
            diff[same] = 0.0
        t_ssim = time.perf_counter()

        # 5. threshold
        if p.threshold == "otsu":
            thr = max(otsu_threshold(diff[region] if masked else diff), float(p.min_threshold))
        else:
            thr = float(p.threshold)
        binary = np.greater(diff, thr).view(np.uint8)  # bool → 0/1 bytes, no copy
        if masked:
            binary &= region.view(np.uint8)

        # 6. morphology
        if p.morph_kernel > 1:
            kern = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (p.morph_kernel, p.morph_kernel))
            binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kern)
            binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, kern)
            if masked:
                binary &= region.view(np.uint8)

        # 7. components
        boxes_w, scores = regions_to_boxes(diff, binary, p.min_area_fraction * w * h)
        t_cc = time.perf_counter()

        # 8. back to each image's pixels
        boxes_a = boxes_w * np.array([wa / w, ha / h, wa / w, ha / h])
        boxes_b = self._map_to_b(boxes_w, H if align_used not in ("none", "identity") else None, (w, h),
                                 (wb, hb))
        boxes_a[:, [0, 2]] = boxes_a[:, [0, 2]].clip(0, wa)
        boxes_a[:, [1, 3]] = boxes_a[:, [1, 3]].clip(0, ha)
        extras: dict[str, Any] = {
            "align": align_used,
            "homography_b_to_a_working": H.tolist(),
            "threshold": thr,
            "working_size": [w, h],
            "notes": notes,
            "device": str(self.device) if self.backend == "torch" else "cpu",
            "backend": self.backend,
            "timings": {"prepare_s": t_prep - t0, "align_s": t_align - t_prep, "ssim_s": t_ssim - t_align,
                        "boxes_s": t_cc - t_ssim},
        }
        if keep_maps:
            extras["diff"] = diff
            extras["valid"] = region
        return PairDetections(boxes_a, scores, boxes_b, scores.copy(), (wa, ha), (wb, hb), paired=True,
                              extras=extras)

    # -- internals -----------------------------------------------------------------------------

    def _difference(self, ga: np.ndarray, gb: np.ndarray, region: np.ndarray) -> np.ndarray:
        """1 − SSIM of two grey uint8 images (B photometrically matched to A over `region`)."""
        x = ga.astype(np.float32) * np.float32(1 / 255.0)
        y = gb.astype(np.float32) * np.float32(1 / 255.0)
        if self.params.normalize:
            y = match_brightness(x, y, region)
        if self.backend == "opencv":
            smap = ssim_map_cv2(x, y, sigma=self.params.sigma, data_range=1.0)
            return np.subtract(np.float32(1.0), smap, out=smap)
        import torch

        with torch.no_grad():
            tx = torch.from_numpy(x).to(self.device)[None, None]
            ty = torch.from_numpy(y).to(self.device)[None, None]
            smap = ssim_map(tx, ty, sigma=self.params.sigma, data_range=1.0)
            return (1.0 - smap[0, 0]).cpu().numpy()

    @staticmethod
    def _map_to_b(boxes_w: np.ndarray, H: np.ndarray | None, work: tuple[int, int],
                  size_b: tuple[int, int]) -> np.ndarray:
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
        out = out * np.array([wb / w, hb / h, wb / w, hb / h])
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, wb)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, hb)
        return out
