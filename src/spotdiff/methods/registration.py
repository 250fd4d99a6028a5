"""Registration for the pixel-wise method: the homography that maps B's pixels onto A's, and the warp.

`auto_homography` (align="auto") first asks whether the pair is already aligned (ECC from identity on
small copies, fitted where A and B agree, moves no corner by `NO_MOTION_PX`: identity, no features
needed); otherwise it estimates a homography from ORB (then SIFT) feature matches refined by ECC, and
keeps it only when the features support it and it fits B to A better than no warp; otherwise
identity, with the reason in the notes. `estimate_homography` (align="homography") insists: ECC alone
as a last resort, a note for every fallback. `warp_onto_a` and `overlap_mask` bring B into A's frame
and say which pixels the warped B covers; `uncovered_fraction` how much of A it leaves out, and
`residual_shift` how far it is still off. All functions take same-size grey uint8 images.
"""

from __future__ import annotations

import numpy as np

MIN_INLIERS = 12
# A feature homography's inliers must span at least this share of the frame on both axes.
MATCH_SPREAD = 0.15
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
    """Homography mapping B's pixels onto A's (grey uint8 images) from feature matches, and #inliers.
    None when the inliers cluster in one place (their box spans under `MATCH_SPREAD` of the frame on
    either axis): on a flat cartoon the features sit on the objects, and one moved object's matches
    make a consistent homography of their own — the object's move, not the camera's."""
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
    if n >= MIN_INLIERS:
        pts = dst.reshape(-1, 2)[inl.ravel() > 0]
        span = (pts.max(axis=0) - pts.min(axis=0)) / np.array([a.shape[1], a.shape[0]])
        if span.min() < MATCH_SPREAD:
            return None, n
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
        bad = (np.abs(d) >= 20 / 255).astype(np.uint8)
        agreement = 1.0 - float(cv2.dilate(bad, np.ones((5, 5), np.uint8)).mean())
        if min_agreement is None:
            # A refinement must see the edges: on flat colours they are the only pixels that say where
            # B is, and a residual misalignment lights exactly them (lines a few px wide). Leave out
            # only the blobs that disagree (the changes): thin lines are opened away first.
            bad = cv2.morphologyEx(bad, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
        mask = cv2.erode(1 - bad, np.ones((5, 5), np.uint8))
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


def warp_onto_a(b: np.ndarray, H: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """B (grey or RGB) warped by H (B → A) into A's frame of `size` (w, h), bilinear; pixels outside B
    replicate its edge, not black: edge pixels must not blend with an invented border."""
    import cv2

    return cv2.warpPerspective(b, H, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def uncovered_fraction(H: np.ndarray, size: tuple[int, int]) -> float:
    """Share of A's frame (`size` w, h) that B, the same size and warped by H (B → A), does not cover."""
    import cv2

    w, h = size
    frame = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    warped = cv2.perspectiveTransform(frame.reshape(-1, 1, 2).astype(np.float64), H).reshape(-1, 2)
    area, _ = cv2.intersectConvexConvex(frame, warped.astype(np.float32))
    return float(min(max(1.0 - area / (w * h), 0.0), 1.0))


def overlap_mask(H: np.ndarray, size: tuple[int, int], margin: int) -> np.ndarray:
    """Bool h×w map of A's frame: True where B warped by H covers the pixel fully, eroded by `margin`
    px (a window of that radius there sees no replicated border)."""
    import cv2

    w, h = size
    inside = cv2.warpPerspective(np.full((h, w), 255, np.uint8), H, (w, h), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inside = np.where(inside >= 254, 255, 0).astype(np.uint8)
    inside = cv2.erode(inside, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    return inside > 0


def residual_shift(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None, max_side: int = 512) -> float:
    """How far (working-frame px) B, already registered onto A, is still off: the length of the
    translation that phase correlation finds between the two (same-size grey uint8; `valid`: the pixels
    B covers) on ≤ `max_side`-px copies — insensitive to exposure, sub-pixel. Flat images with no
    structure give 0."""
    import cv2

    h, w = a.shape
    s = min(1.0, max_side / max(h, w))
    size = (max(8, round(w * s)), max(8, round(h * s)))
    fa = cv2.resize(a, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    fb = cv2.resize(b, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    if valid is not None and not valid.all():
        keep = cv2.resize(valid.view(np.uint8), size, interpolation=cv2.INTER_NEAREST).view(bool)
        fb[~keep] = fa[~keep]  # no counterpart: no evidence either way
    window = cv2.createHanningWindow(size, cv2.CV_32F)
    (dx, dy), response = cv2.phaseCorrelate(fa, fb, window)
    if not np.isfinite(dx) or response < 0.05:
        return 0.0
    return float(np.hypot(dx, dy)) / s
