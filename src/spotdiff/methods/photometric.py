"""Photometric normalisation for the pixel-wise method: B's brightness and colour mapped onto A's.

Exposure, contrast, white balance and saturation are not changes: `match_brightness` (grey: a robust
gain + offset) and `match_colour` / `colour_fit` (a robust 3×3 colour matrix + squares + offset)
fit B to A with the changes themselves and saturated pixels as outliers of the fit.
`apply_colour_fit_u8` applies a fit in uint8 for the 2-px map grid. `to_grey` is the grey conversion
every step uses.
"""

from __future__ import annotations

import numpy as np

from spotdiff.methods.ssim_map import Scratch

# Ridge weight (per sample) on the colour fit's cross-channel and square terms (see match_colour).
RIDGE = 1e-2
# uint8 value v → v · float32(1/255) (float32), for cv2.LUT
UNIT_LUT = np.arange(256, dtype=np.float32) * np.float32(1 / 255.0)


def to_grey(img: np.ndarray) -> np.ndarray:
    import cv2

    if img.ndim == 2:
        return img
    return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)



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
