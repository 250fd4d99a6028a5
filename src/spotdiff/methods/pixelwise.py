"""The pixel-wise method (DESIGN §5): SSIM + colour difference map → threshold → object regions → boxes.

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
   B is warped into A's frame; pixels outside the warped overlap take A's values and are excluded.
3. Photometric normalisation (`normalize`): a robust affine colour fit (3×3 matrix + offset; grey
   images: gain + offset) maps B onto A (the changes themselves and saturated pixels are outliers of
   the fit), so exposure, contrast, white balance and saturation are not differences.
4. Difference map = max(1 − SSIM on grey, local mean colour difference / `colour_scale`). SSIM: grey
   in [0, 1] (explicit data range 1.0; on the 2-px grid the grey levels of the uint8 images, range 255), Gaussian window (`sigma`, truncated at 3.5 σ like
   scikit-image), in torch (one grouped separable convolution, so the same code runs on a GPU) or
   OpenCV. The colour term is the RMS over R, G, B of the Gaussian-blurred signed difference: it
   lights flat and iso-luminant changes that SSIM, blind to a mean shift in a flat patch, leaves dark,
   and averages out anti-aliasing and JPEG noise.
5. Threshold: Otsu on the difference map (but never below `min_threshold`), or a fixed value.
6. Regions (`grouping`):
   - "objects" (default): hysteresis — pixels above `hysteresis` × threshold count when their
     8-connected region has a pixel above the threshold (faint tails of a change are covered, noise
     without a strong core is not); fragments closer than `group_gap` × the frame's longer side are
     one object (a textured object lights up along its texture in pieces); then boxes that overlap
     are merged until none do (one numbered box per object, never overlapping boxes in one image).
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

import functools
import threading
import time
import warnings
from typing import Any

import numpy as np

from spotdiff.errors import SpotdiffError
from spotdiff.methods.base import PairDetections
from spotdiff.params import SsimParams

TRUNCATE = 3.5  # Gaussian window radius in sigmas (scikit-image's default)
MIN_INLIERS = 12
ALIGNS = ("auto", "homography", "none")  # registration modes (see the module doc)
# The colour term blurs over this many SSIM sigmas: at 1 σ JPEG's halved chroma resolution still
# shows along colour edges (1 − SSIM-sized values at quality 75); at 2 σ it averages out.
COLOUR_BLUR = 2.0
# A region with no evidence pixel (see `SsimDetector._difference`) must cover this much of the frame:
# JPEG ringing lights specks (≤ ~0.3 %), a low-contrast textured object lights a large area.
QUIET_REGION_FRACTION = 0.005
# Image sizes whose aspect ratios differ by less than this are one picture padded or cropped.
SAME_SCALE_ASPECT = 0.05
# align=auto matches features on copies this size at most (ORB on 1024² costs ~4× more, ECC refines).
FEATURE_SIDE = 640
FEATURES = 2500  # ORB / SIFT features per image for align=auto
# align=auto first asks whether the pair is already aligned: ECC from identity on copies this size
# at most, fitted where A and B agree — when that agreement covers at least ALIGNED_AGREEMENT of the
# frame. Corners moving less than NO_MOTION_PX (working-frame pixels) are no camera motion.
ALIGNED_CHECK_SIDE = 128
ALIGNED_AGREEMENT = 0.5
ALIGNED_EDGES = 0.8  # ... and A's edges agree with B's (see `_edges_agree`)
NO_MOTION_PX = 0.3
MISFIT_SIDE = 512  # the misfit that picks between warps is measured on copies this size at most
# Ridge weight (per sample) on the colour fit's cross-channel and square terms (see match_colour).
RIDGE = 1e-2
# uint8 value v → v · float32(1/255) (float32), for cv2.LUT
UNIT_LUT = np.arange(256, dtype=np.float32) * np.float32(1 / 255.0)


# ---------------------------------------------------------------- SSIM in torch


def gaussian_kernel1d(sigma: float, truncate: float = TRUNCATE):
    import torch

    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


@functools.lru_cache(maxsize=16)
def gaussian_taps(sigma: float, truncate: float = TRUNCATE) -> np.ndarray:
    """`gaussian_kernel1d` as a float32 numpy array, cached (the OpenCV paths ask for it every call)."""
    taps = gaussian_kernel1d(sigma, truncate).numpy().astype(np.float32)
    taps.flags.writeable = False
    return taps


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

    k = gaussian_taps(sigma, truncate)
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.float32)

    def blur(img: np.ndarray) -> np.ndarray:
        return cv2.sepFilter2D(img, cv2.CV_32F, k, k, borderType=cv2.BORDER_REFLECT)

    # E[x²] + E[y²] is one filter of x² + y² (the filter is linear; only the sum is used).
    sq = cv2.multiply(x, x)
    cv2.accumulateSquare(y, sq)                         # x² + y²
    return _ssim_from_filtered_cv2(blur(x), blur(y), blur(cv2.multiply(x, y)), blur(sq), data_range)


def _ssim_from_filtered_cv2(mx: np.ndarray, my: np.ndarray, exy: np.ndarray, esq: np.ndarray,
                            data_range: float) -> np.ndarray:
    """`_ssim_from_moments` in OpenCV's element-wise ops, in place (the inputs are overwritten), fused
    where one op does two steps: these maps are memory-bound, every pass and every temporary costs as
    much as the maths. `esq` is the filtered x² + y²."""
    import cv2

    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mxy2 = cv2.multiply(mx, my, scale=2.0)              # 2μxμy
    cv2.addWeighted(exy, 2.0, mxy2, -1.0, c2, dst=exy)  # 2σxy + C2
    cv2.add(mxy2, c1, dst=mxy2)                         # 2μxμy + C1
    cv2.multiply(mxy2, exy, dst=mxy2)                   # numerator
    cv2.multiply(mx, mx, dst=mx)
    cv2.accumulateSquare(my, mx)                        # μx² + μy²
    cv2.addWeighted(esq, 1.0, mx, -1.0, c2, dst=esq)    # σx² + σy² + C2
    cv2.add(mx, c1, dst=mx)                             # μx² + μy² + C1
    cv2.multiply(mx, esq, dst=mx)                       # denominator
    cv2.divide(mxy2, mx, dst=mxy2)
    return mxy2


@functools.lru_cache(maxsize=8)
def pyramid_kernel(sigma: float, truncate: float = TRUNCATE) -> np.ndarray:
    """Taps c (float32, odd length, summing to 1) such that OpenCV's `pyrDown` (the 5-tap binomial
    [1 4 6 4 1]/16, then every 2nd pixel) followed by c at the half resolution is the closest, in
    least squares, to the Gaussian window of `sigma` (truncated like `gaussian_kernel1d`) sampled at
    every 2nd pixel. For σ = 1.5: 3 taps, each 1-D weight within 0.006 of the exact one (peak 0.27)."""
    r = int(truncate * sigma + 0.5)
    x = np.arange(-r, r + 1)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g /= g.sum()
    half = max(1, int(round(sigma)))  # taps either side at the half resolution
    reach = max(r, 2 * half + 2)
    binomial = np.array([1, 4, 6, 4, 1]) / 16.0
    composite = np.zeros((2 * reach + 1, 2 * half + 1))  # full-res offset × half-res tap
    for j in range(-half, half + 1):
        for m in range(-2, 3):
            composite[2 * j + m + reach, j + half] += binomial[m + 2]
    target = np.zeros(2 * reach + 1)
    target[reach - r:reach + r + 1] = g
    # Non-negative taps (a negative one can make a local variance negative and SSIM explode) that sum
    # to 1 (a heavily weighted extra equation: flat images keep their level).
    from scipy.optimize import nnls

    c = nnls(np.vstack([composite, 100.0 * np.ones(2 * half + 1)]), np.append(target, 100.0))[0]
    while len(c) > 1 and c[0] == 0 and c[-1] == 0:
        c = c[1:-1]
    return (c / c.sum()).astype(np.float32)


def ssim_map_pyramid(x: np.ndarray, y: np.ndarray, sigma: float = 1.5, data_range: float = 1.0,
                     scratch: Scratch | None = None) -> np.ndarray:
    """The SSIM map of two H×W float32 images at every 2nd pixel (rows and columns 0, 2, 4, ...):
    a ⌈H/2⌉×⌈W/2⌉ map whose local statistics still come from every pixel. uint8 images (grey levels,
    `data_range` 255) are read as such: the squares and products are formed from the bytes.

    The five moments' Gaussian filtering is split into OpenCV's `pyrDown` (binomial blur + every 2nd
    pixel, a quarter of the output) and a short filter at the half resolution (`pyramid_kernel`):
    ~4× less filtering and element-wise work than `ssim_map_cv2` then subsampling, for a window
    within 1 % of the Gaussian. Only x² + y² and xy are formed at full resolution, in `scratch`.
    """
    import cv2

    scratch = scratch or Scratch()
    k = pyramid_kernel(float(sigma))

    def down(img: np.ndarray) -> np.ndarray:
        small = cv2.pyrDown(img, borderType=cv2.BORDER_REFLECT)
        return cv2.sepFilter2D(small, cv2.CV_32F, k, k, dst=small, borderType=cv2.BORDER_REFLECT)

    sq = cv2.multiply(x, x, dst=scratch.get("ssim_sq", x.shape, np.float32), dtype=cv2.CV_32F)
    cv2.accumulateSquare(y, sq)                         # x² + y²
    xy = cv2.multiply(x, y, dst=scratch.get("ssim_xy", x.shape, np.float32), dtype=cv2.CV_32F)
    if x.dtype == np.uint8:  # exact integers in float32
        np.copyto(scratch.get("ssim_x", x.shape, np.float32), x)
        np.copyto(scratch.get("ssim_y", y.shape, np.float32), y)
        x, y = scratch.arrays["ssim_x"], scratch.arrays["ssim_y"]
    return _ssim_from_filtered_cv2(down(x), down(y), down(xy), down(sq), data_range)


class Scratch(threading.local):
    """Reusable scratch arrays for the full-resolution passes, one set per thread.

    A fresh multi-megabyte array costs a page fault per 4 kB page on its first write — at 1024² as
    much time as the arithmetic on it (measured: the SSIM map 19 ms with fresh arrays, 8 ms reused).
    Arrays handed to a caller are never scratch arrays."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        arr = self.arrays.get(name)
        if arr is None or arr.shape != tuple(shape) or arr.dtype != dtype:
            arr = self.arrays[name] = np.empty(shape, dtype)
        return arr


# ---------------------------------------------------------------- registration


class Copies:
    """Downsized copies of two same-size grey images for the registration steps, each size made once
    (INTER_AREA; by halvings while the target is at most half: OpenCV's fast path, ~3× faster than
    one step of 4× or 8×): ECC, the features and the misfit all ask for them."""

    def __init__(self, a: np.ndarray, b: np.ndarray) -> None:
        self.a, self.b = a, b
        self.made: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {(a.shape[1], a.shape[0]): (a, b)}

    def at(self, max_side: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """(A, B, (w, h)) with the longer side ≤ `max_side` (never upsampled; at least 8 px)."""
        import cv2

        h, w = self.a.shape
        s = min(1.0, max_side / max(h, w))
        size = (max(8, round(w * s)), max(8, round(h * s)))
        src = (w, h)
        while size not in self.made:
            if src[0] >= 2 * size[0] and src[1] >= 2 * size[1]:
                step = (src[0] // 2, src[1] // 2)
            else:
                step = size
            if step not in self.made:
                sa, sb = self.made[src]
                self.made[step] = (cv2.resize(sa, step, interpolation=cv2.INTER_AREA),
                                   cv2.resize(sb, step, interpolation=cv2.INTER_AREA))
            src = step
        return (*self.made[size], size)


def _features_homography(a: np.ndarray, b: np.ndarray, kind: str, nfeatures: int = 4000
                         ) -> tuple[np.ndarray | None, int]:
    """Homography mapping B's pixels onto A's (grey uint8 images) from feature matches, and #inliers."""
    import cv2

    if kind == "orb":
        det = cv2.ORB_create(nfeatures=nfeatures, fastThreshold=10)
        norm = cv2.NORM_HAMMING
    else:
        det = cv2.SIFT_create(nfeatures=nfeatures)
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
                    max_side: int = 256, iterations: int = 100, eps: float = 1e-6,
                    min_agreement: float | None = None, copies: Copies | None = None) -> np.ndarray | None:
    """ECC on ≤`max_side`-px copies (`copies`' when given), starting from `init` (B→A) or identity.

    With `init`, the fit is restricted to where B warped by it already matches A — unless that is
    under a fifth of the frame (plain fit), or under `min_agreement` when given (then None).
    Returns the homography mapping B's pixels onto A's, or None when ECC fails.
    """
    import cv2

    ca, cb, size = (copies or Copies(a, b)).at(max_side)
    sx, sy = a.shape[1] / size[0], a.shape[0] / size[1]
    S = np.diag([sx, sy, 1.0])
    sa = ca.astype(np.float32) / 255.0
    sb = cb.astype(np.float32) / 255.0
    warp = np.eye(3, dtype=np.float32)
    mask = None
    if init is not None:  # ECC's warp maps A's pixels to B's, at the reduced size
        warp = (np.linalg.inv(S) @ np.linalg.inv(init) @ S).astype(np.float32)
        warp /= warp[2, 2]
        # ECC is a least-squares fit: the changes themselves pull it off by a fraction of a pixel,
        # enough to light every sharp edge. Fit only where B, warped by `init`, already matches A.
        bw = cv2.warpPerspective(sb, np.linalg.inv(warp.astype(np.float64)), size,
                                 flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        d = sa - bw
        d -= np.median(d)
        mask = cv2.erode((np.abs(d) < 20 / 255).astype(np.uint8), np.ones((5, 5), np.uint8))
        agreement = float(mask.mean())
        if min_agreement is not None and agreement < min_agreement:
            return None
        if agreement < 0.2:  # too little agrees: the plain fit is the better guess
            mask = None
    try:
        _, warp = cv2.findTransformECC(sa, sb, warp, cv2.MOTION_HOMOGRAPHY,
                                       (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, eps),
                                       mask, 3)
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


def _misfit(a: np.ndarray, b: np.ndarray, H: np.ndarray | None, copies: Copies | None = None) -> float:
    """Mean absolute grey difference (0-255) between A and B warped by H (None: as is), over the
    pixels B covers, on ≤ 512-px copies: the yardstick that decides whether a warp helps."""
    import cv2

    sa, sb, size = (copies or Copies(a, b)).at(MISFIT_SIDE)
    sa = sa.astype(np.float32)
    inside = np.ones(sa.shape, bool)
    if H is not None:
        S = np.diag([size[0] / a.shape[1], size[1] / a.shape[0], 1.0])
        Hs = S @ H @ np.linalg.inv(S)
        sb = cv2.warpPerspective(sb, Hs, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        inside = cv2.warpPerspective(np.ones(sa.shape, np.uint8), Hs, size, flags=cv2.INTER_NEAREST) > 0
    if not inside.any():
        return float("inf")
    return float(np.abs(sa - sb.astype(np.float32))[inside].mean())


def _edges_agree(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether A's edges (grey uint8) are where B's are: at least `ALIGNED_EDGES` of A's edge pixels
    (morphological gradient ≥ 20 levels) differ from B by < 20 levels, the median difference aside.

    The quick ECC check fits only where A and B agree; a shifted pair of flat-coloured shapes agrees
    everywhere but along the edges — exactly the pixels that show the motion. Only a pair whose
    edges agree (the changes aside) may be decided by that fit."""
    import cv2

    edges = cv2.morphologyEx(a, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) >= 20
    n = int(np.count_nonzero(edges))
    if n < 64:  # too few edges to tell
        return False
    d = cv2.subtract(a, b, dtype=cv2.CV_16S)
    agree = np.abs(d[edges] - np.median(d)) < 20
    return float(agree.mean()) >= ALIGNED_EDGES


def auto_homography(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, str, list[str]]:
    """Registration for `align="auto"`: (H B→A, method, notes) with method "identity" whenever the
    pair is already aligned, the features do not support a homography, or it does not fit B to A
    better than no warp.

    First the common case, a photo and its edited copy: ECC from identity on ≤`ALIGNED_CHECK_SIDE`-px
    copies, fitted where A and B already agree (at least `ALIGNED_AGREEMENT` of the frame, so the
    changes do not pull it), settles within `NO_MOTION_PX` — no camera motion, no features needed.
    Otherwise features (ORB, then SIFT) refined by ECC, checked against no warp. Without enough
    features, ECC from identity is tried and kept only when it fits B to A clearly better than no warp
    (on flat images it drifts as readily as it converges). Notes say why identity was chosen; nothing
    is warned.
    """
    h, w = a.shape
    if np.array_equal(a, b):
        return np.eye(3), "identity", ["images identical in the working frame; no registration needed"]
    if min(h, w) < 32:
        return np.eye(3), "identity", [f"working frame {w}×{h} too small to register; compared as is"]
    notes: list[str] = []
    copies = Copies(a, b)
    if _edges_agree(*copies.at(ALIGNED_CHECK_SIDE)[:2]):
        still = _ecc_homography(a, b, init=np.eye(3), max_side=ALIGNED_CHECK_SIDE, iterations=10, eps=1e-3,
                                min_agreement=ALIGNED_AGREEMENT, copies=copies)
    else:
        still = None
    if _plausible(still, w, h) and _corner_shift(still, np.eye(3), w, h) < NO_MOTION_PX:
        note = f"no camera motion: ECC on ≤ {ALIGNED_CHECK_SIDE} px copies moves no corner by {NO_MOTION_PX} px"
        return np.eye(3), "identity", [note]
    # Features on ≤ FEATURE_SIDE-px copies: pixel accuracy there is enough, ECC refines after.
    fa, fb, small = copies.at(FEATURE_SIDE)
    S = np.diag([small[0] / w, small[1] / h, 1.0])
    for kind in ("orb", "sift"):
        try:
            # brute-force matching is quadratic in the features: FEATURES keep rotations accurate
            H, n = _features_homography(fa, fb, kind, nfeatures=FEATURES)
            if H is not None:
                H = np.linalg.inv(S) @ H @ S
        except Exception as exc:  # cv2 without SIFT, odd images
            H, n = None, 0
            notes.append(f"{kind} failed ({type(exc).__name__})")
        if not _plausible(H, w, h):
            notes.append(f"{kind}: no plausible homography ({n} consistent matches, need {MIN_INLIERS})")
            continue
        H = H / H[2, 2]
        # Feature positions are pixel-accurate at best and ECC can drift on the changes themselves:
        # keep whichever of (features, features+ECC, no warp) fits B to A best.
        candidates = {kind: H, "identity": np.eye(3)}
        refined = _ecc_homography(a, b, init=H, max_side=512, iterations=50, copies=copies)
        if _plausible(refined, w, h) and _corner_shift(refined, H, w, h) < 0.05 * max(w, h):
            candidates[kind + "+ecc"] = refined / refined[2, 2]
        misfit = {name: _misfit(a, b, None if name == "identity" else M, copies) for name, M in candidates.items()}
        method = min(misfit, key=misfit.get)
        if method == "identity":
            notes.append(f"{kind}: no homography fits B to A better than none "
                         f"(mean |A-B| {misfit[kind]:.2f} vs {misfit['identity']:.2f}); compared as is")
            return np.eye(3), "identity", notes
        H = candidates[method]
        if _corner_shift(H, np.eye(3), w, h) < NO_MOTION_PX:
            # Interpolating by less than a third of a pixel only blurs B.
            return np.eye(3), "identity", notes + [f"{method}: no camera motion (corners move < {NO_MOTION_PX} px)"]
        return H, method, notes
    # Few features (small or smooth images): ECC from identity, kept only if it clearly fits better.
    H = _ecc_homography(a, b, copies=copies)
    if _plausible(H, w, h) and _corner_shift(H, np.eye(3), w, h) >= NO_MOTION_PX:
        before, after = _misfit(a, b, None, copies), _misfit(a, b, H, copies)
        if after < 0.9 * before:
            return H / H[2, 2], "ecc", notes
        notes.append(f"ecc: fits B to A no better than none (mean |A-B| {after:.2f} vs {before:.2f})")
    notes.append("compared without registration")
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


def match_colour(x: np.ndarray, y: np.ndarray, region: np.ndarray, iterations: int = 4,
                 raw_x: np.ndarray | None = None, raw_y: np.ndarray | None = None) -> np.ndarray:
    """Map colour image `y` onto `x` (both H×W×3 float32 in [0, 1]) by a robust colour fit over
    `region`: x ≈ M·y + Q·y² + o (M, Q 3×3 on y and its squares, o offset) — exposure, white balance, contrast
    and saturation are affine colour maps; the squares take up a gamma change.

    Least squares on the inliers (residual within 3 robust σ, at least 2 grey levels), starting from
    a per-channel offset, so the changes and saturated pixels do not bend the fit. Each channel's own
    gain and offset are free; the cross-channel and square terms are pulled towards 0 (ridge): a scene
    of few colours leaves them ill-determined. Given the uint8 images `x` and `y` were made from
    (`raw_x`, `raw_y`: x = raw_x · float32(1/255)), the samples are gathered from those (the same
    values, a quarter of the bytes). Returns `y` itself when the fit is the identity.
    """
    fit = colour_fit(x, y, region, iterations, raw_x, raw_y)
    return y if fit is None else apply_colour_fit(y, fit)


def colour_fit(x: np.ndarray | None, y: np.ndarray | None, region: np.ndarray, iterations: int = 4,
               raw_x: np.ndarray | None = None, raw_y: np.ndarray | None = None) -> np.ndarray | None:
    """`match_colour`'s fit: a 7×3 matrix F with x ≈ F.T @ (y, y², 1) per pixel (rows 0-2: M.T, 3-5: Q.T,
    6: o), or None when it is the identity. `x`, `y` may be None when `raw_x`, `raw_y` are given."""
    import cv2

    shape = raw_x.shape if raw_x is not None else x.shape
    # ≤ ~10k samples: plenty for 21 unknowns, and the robust loop (a median per pass) scales with them
    step = max(1, int(np.ceil(np.sqrt(shape[0] * shape[1] / 10_000))))
    # samples as rows of a 10 × n matrix: y (3), y² (3), 1, x (3) — row-major, so the per-iteration
    # products and selections run over contiguous rows
    if raw_x is not None and raw_y is not None:
        xs8 = np.ascontiguousarray(raw_x[::step, ::step])
        ys8 = np.ascontiguousarray(raw_y[::step, ::step])
        # v · float32(1/255) in (1.5/255, 253.5/255) ⇔ 2 ≤ v ≤ 253, on all three channels
        keep = cv2.bitwise_and(cv2.inRange(xs8, (2, 2, 2), (253, 253, 253)),
                               cv2.inRange(ys8, (2, 2, 2), (253, 253, 253))).view(bool)
        if not region.all():
            keep &= region[::step, ::step]
        n = int(np.count_nonzero(keep))
        both = np.empty((10, n))
        unit = np.float32(1 / 255.0)  # the same values as UNIT_LUT, gathered as bytes then scaled
        np.multiply(ys8[keep].T, unit, out=both[:3], dtype=np.float32, casting="unsafe")
        np.multiply(xs8[keep].T, unit, out=both[7:], dtype=np.float32, casting="unsafe")
    else:
        xs = x[::step, ::step].reshape(-1, 3)
        ys = y[::step, ::step].reshape(-1, 3)
        keep = np.all((xs > 1.5 / 255) & (xs < 253.5 / 255) & (ys > 1.5 / 255) & (ys < 253.5 / 255), axis=1)
        if not region.all():
            keep &= region[::step, ::step].ravel()
        n = int(np.count_nonzero(keep))
        both = np.empty((10, n))
        both[:3] = ys[keep].T
        both[7:] = xs[keep].T
    if n < 64:
        return None
    ys, xs = both[:3], both[7:]
    np.multiply(ys, ys, out=both[3:6])
    both[6] = 1.0
    design = both[:7]  # 7 × n
    prior = np.vstack([np.eye(3), np.zeros((4, 3))])
    fit = prior.copy()
    fit[6] = np.median(xs - ys, axis=1)
    g_all = both @ both.T  # the normal equations' gram matrix and right-hand sides, all samples
    # per output channel, ridge weights per sample (+1e-6: a flat image makes even the free terms collinear)
    ridge = [np.diag([RIDGE * (i != c) + 1e-6 for i in range(3)] + [RIDGE] * 3 + [1e-6]) for c in range(3)]
    previous = None
    for _ in range(iterations):
        res = xs - fit.T @ design
        r = np.sqrt(np.einsum("ij,ij->j", res, res))
        out = r > max(3 * 1.4826 * float(np.median(r)), 2 / 255)
        n_inl = n - int(np.count_nonzero(out))
        if n_inl < 64 or (previous is not None and np.array_equal(out, previous)):
            break  # (the same inliers give the same fit: converged)
        previous = out
        do = both[:, out]  # the outliers are few: take their products off the total
        g = g_all - do @ do.T
        gram, rhs = g[:7, :7], g[:7, 7:]
        for c in range(3):  # channel c's own gain and the offset are free; the rest is pulled to 0
            lam = n_inl * ridge[c]
            fit[:, c] = np.linalg.solve(gram + lam, rhs[:, c] + lam @ prior[:, c])
    if np.abs(fit - prior).max() < 1e-3 and np.abs(fit[6]).max() < 0.5 / 255:
        return None
    return fit


def apply_colour_fit(y: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """M·y + Q·y² + o for an H×W×3 float32 image `y` and a `colour_fit` matrix."""
    import cv2

    y = np.ascontiguousarray(y, dtype=np.float32)
    out = cv2.transform(y, np.concatenate([fit[:3].T, fit[6][:, None]], axis=1).astype(np.float32))
    if np.abs(fit[3:6]).max() > 1e-3:  # no gamma to undo: skip a pass over the image
        cv2.add(out, cv2.transform(cv2.multiply(y, y), fit[3:6].T.astype(np.float32)), dst=out)
    return out


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


def _merge_overlapping(boxes: np.ndarray, members: list[list[int]]) -> tuple[np.ndarray, list[list[int]]]:
    """Merge boxes (xyxy, exclusive ends) that overlap, repeating until none do (a merged box can
    reach a third one); `members` follows the merges. Union-find over the overlap graph per round."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    while len(boxes) > 1:
        ix = np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(boxes[:, None, 0], boxes[None, :, 0])
        iy = np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(boxes[:, None, 1], boxes[None, :, 1])
        touch = (ix > 0) & (iy > 0)
        np.fill_diagonal(touch, False)
        if not touch.any():
            break
        i, j = np.nonzero(touch)
        n, group = connected_components(coo_matrix((np.ones(i.size), (i, j)), shape=(len(boxes),) * 2),
                                        directed=False)
        merged = np.empty((n, 4))
        merged[:, :2] = np.inf
        merged[:, 2:] = -np.inf
        np.minimum.at(merged[:, 0], group, boxes[:, 0])
        np.minimum.at(merged[:, 1], group, boxes[:, 1])
        np.maximum.at(merged[:, 2], group, boxes[:, 2])
        np.maximum.at(merged[:, 3], group, boxes[:, 3])
        new_members: list[list[int]] = [[] for _ in range(n)]
        for k, g in enumerate(group):
            new_members[g].extend(members[k])
        boxes, members = merged, new_members
    return boxes, members


def group_objects(diff: np.ndarray, high: float, low: float, gap: int, min_area: float,
                  region: np.ndarray | None = None, evidence: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Object-level regions of a difference map → (xyxy boxes, scores, one diagnostics dict per box).

    Rules, in order (each box's dict says which ones joined its fragments):
    - hysteresis: 8-connected regions of `diff > low` that hold a pixel `> high` (and, when
      `evidence` is given, a pixel marked there, or else cover `QUIET_REGION_FRACTION` of the
      frame) — a fragment;
    - gap: fragments within `gap` px of each other (Chebyshev) are one object — the pixels are
      labelled on a dilated copy, so boxes stay tight around the real pixels;
    - overlap: objects whose boxes overlap are merged, repeatedly, so no two boxes overlap;
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
    # fragments → objects: label the kept pixels on a copy dilated by the gap
    if gap > 0:
        kept = np.zeros(h * w, np.uint8)
        kept[fg] = 1
        grown = cv2.dilate(kept.reshape(h, w), np.ones((gap + 1, gap + 1), np.uint8))
        _, obj_labels = cv2.connectedComponents(grown, connectivity=8, ltype=cv2.CV_32S)
        obj = obj_labels.ravel()[fg]
    else:
        obj = lab
    present = np.bincount(obj) > 0  # dense object ids without sorting every pixel
    remap = np.cumsum(present) - 1
    obj = remap[obj]
    m = int(present.sum())
    obj_of_fragment = np.zeros(n, np.int64)
    obj_of_fragment[lab] = obj  # a fragment lies in one object: dilation only joins
    fragments = np.bincount(obj_of_fragment[np.flatnonzero(strong)], minlength=m)
    area = np.bincount(obj, minlength=m).astype(np.float64)
    sums = np.bincount(obj, weights=np.minimum(diff.ravel()[fg], 1.0), minlength=m)
    big = np.flatnonzero(area >= max(min_area, 1))
    # boxes from the kept pixels' coordinates (the kept pixels are few; no pass over the frame)
    ys, xs = np.divmod(fg, w)
    boxes = np.empty((m, 4), np.int64)
    boxes[:, :2] = np.iinfo(np.int64).max
    boxes[:, 2:] = -1
    np.minimum.at(boxes[:, 0], obj, xs)
    np.minimum.at(boxes[:, 1], obj, ys)
    np.maximum.at(boxes[:, 2], obj, xs)
    np.maximum.at(boxes[:, 3], obj, ys)
    boxes[:, 2:] += 1
    boxes = boxes[big].astype(np.float64)
    area, sums, fragments = area[big], sums[big], fragments[big]
    members = [[k] for k in range(len(big))]
    boxes, members = _merge_overlapping(boxes, members)
    scores = np.array([sums[mb].sum() / area[mb].sum() for mb in members]) if members else np.zeros(0)
    info = []
    for mb in members:
        frags = int(fragments[mb].sum())
        rules = (["gap"] if any(fragments[k] > 1 for k in mb) else []) + (["overlap"] if len(mb) > 1 else [])
        info.append({"fragments": frags, "pixels": int(area[mb].sum()), "merged_by": rules})
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order], [info[k] for k in order]


def colour_difference(x: np.ndarray, y: np.ndarray, sigma: float, scale: float,
                      raw_x: np.ndarray | None = None, raw_y: np.ndarray | None = None) -> np.ndarray:
    """Local mean colour difference of two H×W×3 float32 images in [0, 1], divided by `scale`.

    The blur decides whether the colour changed: RMS over channels of the Gaussian-blurred signed
    difference (anti-aliasing and JPEG ringing flip sign along an edge and cancel out). The pixels
    say where: the term is capped by the pixels' own RMS difference, so the blur's halo does not
    spill into unchanged background and inflate the boxes of small objects. Both are computed on 2×2
    blocks (the term is smooth at this σ; 4× less work; a pixel of slack for the cap) and the result
    is upsampled. Given the uint8 images before the photometric fit (`raw_x`, `raw_y`), a channel's
    difference that clipping explains is dropped: B at 255 reading darker than A, B at 0 reading
    brighter (and the same for A) — a brighter exposure saturates whites, which is no change.
    """
    import cv2

    h, w = x.shape[:2]
    mean_rgb = np.full((1, 3), 1 / 3, np.float32)
    d = np.subtract(x, y)
    if raw_x is not None and raw_y is not None:
        explained = (((raw_y == 255) | (raw_x == 0)) & (d > 0)) | (((raw_y == 0) | (raw_x == 255)) & (d < 0))
        d[explained] = 0.0
    f = 2 if min(h, w) >= 64 else 1
    size = ((w + f - 1) // f, (h + f - 1) // f)
    k = gaussian_taps(sigma / f)
    own = cv2.transform(cv2.multiply(d, d), mean_rgb)
    if f > 1:
        own = cv2.resize(own, size, interpolation=cv2.INTER_AREA)
        d = cv2.resize(d, size, interpolation=cv2.INTER_AREA)
    local = cv2.sepFilter2D(d, cv2.CV_32F, k, k, borderType=cv2.BORDER_REFLECT)
    out = cv2.transform(cv2.multiply(local, local), mean_rgb)  # mean over channels, one pass
    np.minimum(out, own, out=out)
    cv2.sqrt(out, out)
    out *= np.float32(1.0 / scale)
    if f > 1:
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)
    return out


# The colour fit's square terms are skipped on the uint8 path when they move no value by more than
# this many grey levels (the rounding of the uint8 result itself).
SQUARE_TERM_LEVELS = 1.0


def apply_colour_fit_u8(raw_y: np.ndarray, fit: np.ndarray | None, scratch: Scratch | None = None,
                        name: str = "fitted") -> np.ndarray:
    """`apply_colour_fit` on a uint8 RGB image, in uint8 (rounded, clipped to 0-255): one `cv2.transform`
    pass for M·y + o; the square terms Q·y² (a gamma change) through float only when they move some
    value by more than `SQUARE_TERM_LEVELS`. `fit` None: `raw_y` itself. `scratch`'s array `name` when
    given."""
    import cv2

    if fit is None:
        return raw_y
    dst = scratch.get(name, raw_y.shape, np.uint8) if scratch else None
    if np.abs(fit[3:6]).sum(axis=0).max() * 255.0 <= SQUARE_TERM_LEVELS:
        affine = np.concatenate([fit[:3].T, 255.0 * fit[6][:, None]], axis=1).astype(np.float32)
        return cv2.transform(raw_y, affine, dst=dst)
    out = apply_colour_fit(cv2.LUT(raw_y, UNIT_LUT), fit)
    cv2.max(out, 0.0, dst=out)
    return cv2.convertScaleAbs(out, dst=dst, alpha=255.0)  # rounds and saturates at 255


def colour_difference_blocks(raw_x: np.ndarray, raw_y: np.ndarray, fit: np.ndarray | None, fitted: np.ndarray,
                             sigma: float, scale: float, same: np.ndarray | None = None,
                             scratch: Scratch | None = None) -> np.ndarray:
    """`colour_difference` on the 2×2-block grid (⌈H/2⌉×⌈W/2⌉), from uint8 images only: A (`raw_x`),
    B before the colour fit (`raw_y`), the fit (`colour_fit`; None = identity) and B after it
    (`fitted`, `apply_colour_fit_u8`). These passes are memory-bound: a uint8 pass moves a quarter of the bytes
    of a float one.

    The blur (whether the colour changed) is taken on the 4×4 block means of A and fitted B and
    interpolated to the 2×2 grid — the same smooth term as `colour_difference`. The cap (where: the pixels' own RMS difference) keeps its
    full-resolution statistics: the per-pixel |A − fitted B| is squared (16 bits, exact) and averaged
    over the block and the channels — the mean of the squares, not the square of the mean, so a
    textured or half-covered block keeps its full cap. A channel's difference that clipping explains
    is dropped in the cap (B at 255 reading darker than A, B at 0 brighter; A's own clipping needs no
    rule in uint8), which zeroes the term there. `same` (bool, on the block grid): blocks where B took
    A's values; no difference there.
    """
    import cv2

    scratch = scratch or Scratch()
    h, w = raw_x.shape[:2]
    size = ((w + 1) // 2, (h + 1) // 2)
    # where: mean over the block and the channels of the per-pixel squared difference
    y_lo = y_hi = fitted
    if fit is not None:
        lo, hi = cv2.minMaxLoc(raw_y.reshape(h, -1))[:2]
        m, o = 255.0 * fit[:3].T, 255.0 * fit[6]  # fitted = m @ (y / 255) + o, in grey levels
        off_lo, off_hi = np.minimum(m, 0).sum(axis=1) - np.minimum(np.diag(m), 0), \
            np.maximum(m, 0).sum(axis=1) - np.maximum(np.diag(m), 0)
        # Each rule is skipped when it cannot move |A − fitted B| by more than 2 grey levels (a change
        # is ~20): B's white (black) maps to ≥ 253 (≤ 2) whatever the other channels are — saturation
        # did the work.
        if hi == 255 and (np.diag(m) + off_lo + o < 253.0).any():  # B clipped at white: A brighter is no change
            clipped = cv2.compare(raw_y.reshape(h, -1), 255, cv2.CMP_EQ,  # 255 there, else 0
                                  dst=scratch.get("cd_hi", (h, 3 * w), np.uint8)).reshape(raw_y.shape)
            y_hi = cv2.max(fitted, clipped, dst=clipped)
        if lo == 0 and (off_hi + o > 2.0).any():  # B clipped at black: A darker is no change
            clipped = cv2.compare(raw_y.reshape(h, -1), 0, cv2.CMP_NE,  # 0 there, else 255
                                  dst=scratch.get("cd_lo", (h, 3 * w), np.uint8)).reshape(raw_y.shape)
            y_lo = cv2.min(fitted, clipped, dst=clipped)
    if y_lo is y_hi:
        absd = cv2.absdiff(raw_x, y_hi, dst=scratch.get("cd_abs", raw_y.shape, np.uint8))
    else:  # saturating subtractions: at most one of the two is non-zero
        absd = cv2.subtract(raw_x, y_hi, dst=scratch.get("cd_abs", raw_y.shape, np.uint8))
        cv2.add(absd, cv2.subtract(y_lo, raw_x, dst=scratch.get("cd_neg", raw_y.shape, np.uint8)), dst=absd)
    sq = scratch.get("cd_sq", raw_y.shape, np.uint16)
    np.copyto(sq, absd)
    cv2.multiply(sq, sq, dst=sq)  # 255² fits in 16 bits (a same-type multiply: ~2× a table look-up)
    own = cv2.resize(sq, size, dst=scratch.get("cd_own3", (size[1], size[0], 3), np.uint16),
                     interpolation=cv2.INTER_AREA)  # mean over the block, rounded (< 1e-5 of the range)
    own = cv2.transform(own.astype(np.float32), np.full((1, 3), 1 / (3 * 255.0 ** 2), np.float32))
    # how much: the Gaussian-blurred signed difference of the 4×4 block means (σ is 3 px or more: the
    # blur is smooth on that grid), brought to the 2×2 grid by linear interpolation
    size4 = ((size[0] + 1) // 2, (size[1] + 1) // 2)
    # two halvings: INTER_AREA by 2 is OpenCV's fast path (by 4 in one step is ~3× slower)
    xs = cv2.resize(cv2.resize(raw_x, size, interpolation=cv2.INTER_AREA), size4, interpolation=cv2.INTER_AREA)
    ys = cv2.resize(cv2.resize(fitted, size, interpolation=cv2.INTER_AREA), size4, interpolation=cv2.INTER_AREA)
    d = cv2.subtract(xs, ys, dtype=cv2.CV_32F)  # grey levels
    if same is not None:  # a 4×4 block with any 2×2 block in `same`
        own[same] = 0.0
        d[cv2.resize(same.view(np.uint8) * np.uint8(255), size4, interpolation=cv2.INTER_AREA) > 0] = 0.0
    k = gaussian_taps(sigma / 4)
    local = cv2.sepFilter2D(d, cv2.CV_32F, k, k, dst=d, borderType=cv2.BORDER_REFLECT)
    out = cv2.transform(cv2.multiply(local, local, dst=local), np.full((1, 3), 1 / (3 * 255.0 ** 2), np.float32))
    out = cv2.resize(out, size, interpolation=cv2.INTER_LINEAR)
    np.minimum(out, own, out=out)
    cv2.sqrt(out, out)
    out *= np.float32(1.0 / scale)
    return out


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
        if self.align not in ALIGNS:
            raise SpotdiffError(f"align: unknown value {self.align!r}; use {', '.join(ALIGNS)}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if backend not in ("auto", "torch", "opencv"):
            raise SpotdiffError(f"backend: unknown value {backend!r}; use auto, torch or opencv")
        if backend == "auto":
            backend = "torch" if self.device.type != "cpu" else "opencv"
        self.backend = backend
        self._scratch = Scratch()

    # -- public API ----------------------------------------------------------------------------

    def detect(self, img_a: np.ndarray, img_b: np.ndarray, ignore_mask: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.run(img_a, img_b, ignore_mask).as_tuple()

    def run(self, img_a: np.ndarray, img_b: np.ndarray, ignore_mask: np.ndarray | None = None,
            keep_maps: bool = False) -> PairDetections:
        """Detect, returning `PairDetections` (paired boxes) with diagnostics in `extras`
        (`align` used and `align_requested`, `homography_b_to_a_working`, `threshold`, `grouping`,
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
        ca = _resize(a if colour else _grey(a), (w, h))
        sx, sy = wb / wa, hb / ha
        if sx != sy and abs(sx / sy - 1) < SAME_SCALE_ASPECT:
            # Nearly the same aspect ratio: B is A padded or cropped (the inpainter pads to a multiple
            # of 8, phones crop), not stretched — same scale on both axes, top-left anchored; the
            # registration takes up any other offset. Stretching would shift the far edge by the pad.
            f = s / min(sx, sy)  # B-working pixels per B pixel
            cb = _resize(b if colour else _grey(b), (max(w, round(wb * f)), max(h, round(hb * f))))[:h, :w]
            b_scale = (f, f)
        else:
            cb = _resize(b if colour else _grey(b), (w, h))
            b_scale = (w / wb, h / hb)
        # grey copies for the registration and the grey-only path (the colour path works from ca, cb)
        ga = _grey(ca) if self.align != "none" or not colour else None
        gb = _grey(cb) if self.align != "none" or not colour else None
        ign = None
        if ignore_mask is not None and ignore_mask.any():
            ign = cv2.resize(ignore_mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        t_prep = time.perf_counter()

        # 2. registration
        notes: list[str] = []
        H = np.eye(3)
        align_used = "none"
        valid = None  # pixels B covers after the warp; None: all
        if self.align != "none":
            if self.align == "auto":
                H, align_used, notes = auto_homography(ga, gb)
            else:
                H, align_used, notes = estimate_homography(ga, gb)
                for note in notes:
                    warnings.warn(f"ssim registration: {note}", RuntimeWarning, stacklevel=2)
            if align_used != "identity":
                # replicate, not black: edge pixels must not blend with an invented border
                cb = cv2.warpPerspective(cb, H, (w, h), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_REPLICATE)
                gb = cb if cb.ndim == 2 else (_grey(cb) if not colour else None)
                inside = cv2.warpPerspective(np.full((h, w), 255, np.uint8), H, (w, h),
                                             flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                             borderValue=0)
                inside = np.where(inside >= 254, 255, 0).astype(np.uint8)
                r = int(TRUNCATE * p.sigma + 0.5) + 1
                inside = cv2.erode(inside, np.ones((2 * r + 1, 2 * r + 1), np.uint8))
                valid = inside > 0
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
            diff, evidence = self._difference(ga, gb, region, ca if colour else None, cb if colour else None,
                                              same if masked else None)
            region_m = region
        else:
            same_m = None
            if masked:  # a block with any pixel outside the overlap (or ignored) is outside
                same_m = cv2.resize(same.astype(np.float32), ((w + 1) // 2, (h + 1) // 2),
                                    interpolation=cv2.INTER_AREA) > 0
            diff, evidence = self._difference_blocks(ga, gb, region, ca if colour else None,
                                                     cb if colour else None, same if masked else None, same_m)
            region_m = ~same_m if masked else None
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
                                                          region_m if masked else None, evidence)
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
        """2 (difference map on every 2nd pixel, `_difference_blocks`) for frames longer than
        `map_side` on the OpenCV backend, else 1. pyrDown's binomial window is σ = 1: a narrower
        SSIM window cannot be built on it."""
        p = self.params
        big = p.map_side > 0 and max(w, h) > p.map_side and min(w, h) >= 32
        return 2 if big and self.backend == "opencv" and p.sigma >= 1.0 else 1

    def _difference_blocks(self, ga: np.ndarray | None, gb: np.ndarray | None, region: np.ndarray,
                           ca: np.ndarray | None, cb: np.ndarray | None, same: np.ndarray | None,
                           same_m: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """`_difference` on the map grid of every 2nd pixel (⌈H/2⌉×⌈W/2⌉), from every pixel's statistics:
        SSIM by `ssim_map_pyramid`, the colour term by `colour_difference_blocks`, evidence when any
        pixel of the 2×2 block moved by `seed_delta`. Full-resolution passes stay in uint8 where they
        can and write into this detector's scratch arrays. `same`: full-resolution; `same_m`: the grid's."""
        import cv2

        p = self.params
        scratch = self._scratch
        if ca is not None:
            h, w = ca.shape[:2]
            fit = colour_fit(None, None, region, raw_x=ca, raw_y=cb) if p.normalize else None
            fitted = apply_colour_fit_u8(cb, fit, scratch)
            # grey in uint8 (as the scikit-image recipe's), SSIM in grey levels (data range 255)
            g8x = ga if ga is not None else cv2.cvtColor(ca, cv2.COLOR_RGB2GRAY,
                                                         dst=scratch.get("gx", (h, w), np.uint8))
            g8y = cv2.cvtColor(fitted, cv2.COLOR_RGB2GRAY, dst=scratch.get("gy", (h, w), np.uint8))
            if same is not None:
                np.copyto(g8y, g8x, where=same)
            x, y, data_range = g8x, g8y, 255.0
            moved = cv2.absdiff(g8x, g8y, dst=scratch.get("moved", (h, w), np.uint8))
            seed = p.seed_delta * 255.0  # |Δ| > seed_delta on the 1/255 grid
        else:
            h, w = ga.shape
            x = cv2.LUT(ga, UNIT_LUT, dst=scratch.get("x", (h, w), np.float32))
            y = cv2.LUT(gb, UNIT_LUT, dst=scratch.get("y", (h, w), np.float32))
            if p.normalize:
                y = match_brightness(x, y, region)
            if same is not None:
                np.copyto(y, x, where=same)
            data_range = 1.0
            moved = cv2.absdiff(x, y, dst=scratch.get("moved", (h, w), np.float32))
            seed = p.seed_delta
        size = ((w + 1) // 2, (h + 1) // 2)
        evidence = None
        if p.grouping == "objects":
            cv2.threshold(moved, seed, 1.0, cv2.THRESH_BINARY, dst=moved)
            evidence = cv2.resize(moved, size, interpolation=cv2.INTER_AREA) > 0  # any pixel of the block
        smap = ssim_map_pyramid(x, y, sigma=p.sigma, data_range=data_range, scratch=scratch)
        diff = np.subtract(np.float32(1.0), smap, out=smap)
        if ca is not None and p.colour_scale > 0:
            col = colour_difference_blocks(ca, cb, fit, fitted, COLOUR_BLUR * p.sigma, p.colour_scale, same_m, scratch)
            if evidence is not None:
                evidence |= col > np.float32(p.min_threshold)
            np.maximum(diff, col, out=diff)
        return diff, evidence

    def _difference(self, ga: np.ndarray, gb: np.ndarray, region: np.ndarray,
                    ca: np.ndarray | None = None, cb: np.ndarray | None = None,
                    same: np.ndarray | None = None) -> np.ndarray:
        """(difference map, evidence): the map is max(1 − SSIM of the grey images, colour difference of
        the colour ones when given), B photometrically matched to A over `region` (an affine colour fit
        when colour is given); where `same` is True, B takes A's values after the match, so no step
        is left at its border. `evidence` marks pixels whose grey level moved by `seed_delta` or whose
        mean colour moved past `min_threshold`: an object region must hold one."""
        import cv2

        p = self.params
        if ca is not None:
            # uint8 → [0, 1] float32 by table look-up: the same values as v · float32(1/255), one pass
            x3 = cv2.LUT(ca, UNIT_LUT)
            y3 = cv2.LUT(cb, UNIT_LUT)
            if p.normalize:
                y3 = match_colour(x3, y3, region, raw_x=ca, raw_y=cb)
            if same is not None:
                y3 = np.where(same[..., None], x3, y3)
            y3 = np.ascontiguousarray(y3, dtype=np.float32)
            x = _grey(x3)
            y = _grey(y3)
        else:
            x = cv2.LUT(ga, UNIT_LUT)
            y = cv2.LUT(gb, UNIT_LUT)
            if p.normalize:
                y = match_brightness(x, y, region)
            if same is not None:
                y = np.where(same, x, y)
        # A change moves some grey level by seed_delta; JPEG ringing and noise, which SSIM can rate
        # as different as a real change in a fine texture, do not (≤ ~30/255 at quality 60-75).
        evidence = np.greater(cv2.absdiff(x, y), np.float32(p.seed_delta)) if p.grouping == "objects" else None
        if self.backend == "opencv":
            smap = ssim_map_cv2(x, y, sigma=p.sigma, data_range=1.0)
            diff = np.subtract(np.float32(1.0), smap, out=smap)
        else:
            import torch

            with torch.no_grad():
                tx = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)[None, None]
                ty = torch.from_numpy(np.ascontiguousarray(y)).to(self.device)[None, None]
                smap = ssim_map(tx, ty, sigma=p.sigma, data_range=1.0)
                diff = (1.0 - smap[0, 0]).cpu().numpy()
        if ca is not None:
            col = colour_difference(x3, y3, COLOUR_BLUR * p.sigma, p.colour_scale, ca, cb)
            if evidence is not None:
                evidence |= col > np.float32(p.min_threshold)  # a mean colour shift is evidence itself
            np.maximum(diff, col, out=diff)
        return diff, evidence

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
