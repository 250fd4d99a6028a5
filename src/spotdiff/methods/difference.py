"""The pixel-wise method's difference map: max(1 − SSIM on grey, local mean colour difference).

`difference_map` works on every pixel of the working frame (SSIM by `ssim_map_cv2` or, on the torch
back-end, `ssim_map`); `difference_map_blocks` on the grid of every 2nd pixel, from every pixel's
statistics (`ssim_map_pyramid`, `colour_difference_blocks`), for large frames. Both first match B's
brightness / colour to A's (`spotdiff.methods.photometric`) and return an evidence map: pixels whose
grey level moved by `seed_delta` or whose mean colour moved past `min_threshold` (an object region
must hold one).
"""

from __future__ import annotations

import numpy as np

from spotdiff.methods.photometric import (
    UNIT_LUT,
    apply_colour_fit_u8,
    colour_fit,
    match_brightness,
    match_colour,
    to_grey,
)
from spotdiff.methods.ssim_map import Scratch, gaussian_taps, ssim_map, ssim_map_cv2, ssim_map_pyramid
from spotdiff.params import SsimParams

# The colour term blurs over this many SSIM sigmas: at 1 σ JPEG's halved chroma resolution still
# shows along colour edges (1 − SSIM-sized values at quality 75); at 2 σ it averages out.
COLOUR_BLUR = 2.0


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


def unmatched_within(x: np.ndarray, y: np.ndarray, radius: int, region: np.ndarray, levels: float) -> np.ndarray:
    """Bool map of the pixels that have no match within `radius` px in the other image: x (uint8, grey
    or RGB) and y registered onto it; y is first fitted to x's colours over `region` (`colour_fit`).
    A pixel of x matches when each channel lies within `levels` grey levels of the range that y takes
    over the (2·radius+1)² square around it, and the same the other way round — a per-pixel diff
    tool's anti-aliasing test, here absorbing a residual misalignment of up to `radius` px."""
    import cv2

    if x.ndim == 3:
        y = apply_colour_fit_u8(y, colour_fit(None, None, region, raw_x=x, raw_y=y))
    else:
        fx = cv2.LUT(x, UNIT_LUT)
        fy = match_brightness(fx, cv2.LUT(y, UNIT_LUT), region)
        y = cv2.convertScaleAbs(fy, alpha=255.0)
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    lv = round(levels)
    out = None
    for p, q in ((x, y), (y, x)):
        over = cv2.subtract(p, cv2.dilate(q, kernel))  # above the neighbourhood's maximum
        under = cv2.subtract(cv2.erode(q, kernel), p)  # below its minimum
        miss = cv2.max(over, under)
        if miss.ndim == 3:  # the worst channel (cv2 on planes: ~10× numpy's max over the last axis)
            r, g, b = cv2.split(miss)
            miss = cv2.max(cv2.max(r, g), b)
        miss = miss > lv
        out = miss if out is None else out | miss
    return out


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


def difference_map_blocks(ga: np.ndarray | None, gb: np.ndarray | None, region: np.ndarray,
                          ca: np.ndarray | None, cb: np.ndarray | None, same: np.ndarray | None,
                          same_m: np.ndarray | None, p: SsimParams,
                          scratch: Scratch) -> tuple[np.ndarray, np.ndarray | None]:
    """`difference_map` on the map grid of every 2nd pixel (⌈H/2⌉×⌈W/2⌉), from every pixel's statistics:
    SSIM by `ssim_map_pyramid`, the colour term by `colour_difference_blocks`, evidence when any
    pixel of the 2×2 block moved by `seed_delta`. Full-resolution passes stay in uint8 where they
    can and write into `scratch`'s arrays. `same`: full-resolution; `same_m`: the grid's."""
    import cv2

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


def difference_map(ga: np.ndarray, gb: np.ndarray, region: np.ndarray, ca: np.ndarray | None,
                   cb: np.ndarray | None, same: np.ndarray | None, p: SsimParams, backend: str,
                   device=None) -> tuple[np.ndarray, np.ndarray | None]:
    """(difference map, evidence): the map is max(1 − SSIM of the grey images, colour difference of
    the colour ones when given), B photometrically matched to A over `region` (an affine colour fit
    when colour is given); where `same` is True, B takes A's values after the match, so no step
    is left at its border. `evidence` marks pixels whose grey level moved by `seed_delta` or whose
    mean colour moved past `min_threshold`: an object region must hold one. `backend`: "opencv"
    (`ssim_map_cv2`) or "torch" (`ssim_map` on `device`)."""
    import cv2

    if ca is not None:
        # uint8 → [0, 1] float32 by table look-up: the same values as v · float32(1/255), one pass
        x3 = cv2.LUT(ca, UNIT_LUT)
        y3 = cv2.LUT(cb, UNIT_LUT)
        if p.normalize:
            y3 = match_colour(x3, y3, region, raw_x=ca, raw_y=cb)
        if same is not None:
            y3 = np.where(same[..., None], x3, y3)
        y3 = np.ascontiguousarray(y3, dtype=np.float32)
        x = to_grey(x3)
        y = to_grey(y3)
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
    if backend == "opencv":
        smap = ssim_map_cv2(x, y, sigma=p.sigma, data_range=1.0)
        diff = np.subtract(np.float32(1.0), smap, out=smap)
    else:
        import torch

        with torch.no_grad():
            tx = torch.from_numpy(np.ascontiguousarray(x)).to(device)[None, None]
            ty = torch.from_numpy(np.ascontiguousarray(y)).to(device)[None, None]
            smap = ssim_map(tx, ty, sigma=p.sigma, data_range=1.0)
            diff = (1.0 - smap[0, 0]).cpu().numpy()
    if ca is not None:
        col = colour_difference(x3, y3, COLOUR_BLUR * p.sigma, p.colour_scale, ca, cb)
        if evidence is not None:
            evidence |= col > np.float32(p.min_threshold)  # a mean colour shift is evidence itself
        np.maximum(diff, col, out=diff)
    return diff, evidence
