"""Local changes of light that are not changes of the scene: cast shadows, pools of light, haze.

One function, `relight(rng, image)`, used by the VIRAT-STD stand-in (`spotdiff.data.standins`: its
second image of every pair) and by the relit training pairs (`spotdiff.data.pairs`, `pairs.relight_fraction`),
so the model trains on the nuisance the stand-in tests. Unlike a global gain / gamma / colour cast,
which a pixel method's colour fit undoes, these vary across the frame:

- cast shadows: 1-2 soft-edged regions darkened to 45-80 % (a building's edge: a half-plane cut by a
  random line; a tree: a ragged blob of a quarter to a half of the frame), slightly blue (skylight);
- pools of light: 0-2 warm radial brightenings (lamps, sun through a gap), up to +25-60 % at the centre;
- haze: with p = 0.5, a blend towards a light grey airlight that thickens along a random direction
  (up to 15-35 %);
- a mild global gain and (grey) sensor noise, as any two frames of a static camera have.

The light fields (gain, haze) are smooth, so they are drawn at a long side of 128 px and resized to
the image (a relit 320×256 image costs a few ms). Drawn from `rng` only (same rng state, same bytes). Image in and out: H×W×3 uint8 RGB.
"""

from __future__ import annotations

import cv2
import numpy as np


def _shadow_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A soft 0..1 shadow region (float32 H×W)."""
    mask = np.zeros((h, w), np.float32)
    side = max(h, w)
    if rng.random() < 0.5:  # a straight edge: everything on one side of a random line
        angle = rng.uniform(0, 2 * np.pi)
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        nx, ny = np.cos(angle), np.sin(angle)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        mask[(xs - cx) * nx + (ys - cy) * ny > 0] = 1.0
    else:  # a ragged blob (foliage)
        n = 28
        angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
        radius = rng.uniform(0.25, 0.5) * side / 2
        radii = radius * (1 + sum(rng.uniform(-0.25, 0.25) * np.cos(f * angles + rng.uniform(0, 6.3))
                                  for f in (2, 3, 5, 7)))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
        cv2.fillPoly(mask, [pts.astype(np.int32)], 1.0)
    sigma = max(0.6, rng.uniform(0.5, 2.5) * side / 256)  # penumbra
    return cv2.GaussianBlur(mask, (0, 0), sigma)


FIELD_SIDE = 128  # the light fields are smooth: drawn at this long side, then resized to the image


def relight(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """`image` under new, locally varying light (module docstring); a new array."""
    h, w = image.shape[:2]
    scale = min(1.0, FIELD_SIDE / max(h, w))
    fh, fw = max(1, round(h * scale)), max(1, round(w * scale))
    side = max(fh, fw)
    gain = np.ones((fh, fw, 3), np.float32)
    for _ in range(int(rng.integers(1, 3))):
        shadow = _shadow_mask(rng, fh, fw)[..., None]
        depth = rng.uniform(0.2, 0.55)
        tint = np.array([1.0, 1.0, 0.9], np.float32) if rng.random() < 0.5 else np.ones(3, np.float32)
        gain *= 1 - shadow * np.float32(depth) * tint  # blue-ish shade: red and green drop a little more
    ys, xs = np.mgrid[0:fh, 0:fw].astype(np.float32)
    for _ in range(int(rng.integers(0, 3))):
        cx, cy = rng.uniform(0, fw), rng.uniform(0, fh)
        r = rng.uniform(0.1, 0.3) * side
        amp = rng.uniform(0.25, 0.6)
        warm = np.array([1.0, 0.9, 0.7], np.float32)
        pool = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / np.float32(2 * r * r))[..., None]
        gain *= 1 + pool * np.float32(amp) * warm
    gain *= np.float32(rng.uniform(0.9, 1.1) / 255.0)
    haze = None
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (xs - fw / 2) * np.float32(np.cos(angle)) + (ys - fh / 2) * np.float32(np.sin(angle))
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
        haze = (ramp * np.float32(rng.uniform(0.15, 0.35)), np.float32(rng.uniform(0.75, 0.95)))
    if (fh, fw) != (h, w):
        gain = cv2.resize(gain, (w, h), interpolation=cv2.INTER_LINEAR)
    x = image.astype(np.float32)
    x *= gain
    if haze is not None:
        t, airlight = haze
        if (fh, fw) != (h, w):
            t = cv2.resize(t, (w, h), interpolation=cv2.INTER_LINEAR)
        t = t[..., None]
        x *= 1 - t
        x += airlight * t
    x += rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(0.01)  # sensor noise (grey)
    np.clip(x, 0, 1, out=x)
    x *= 255
    x += 0.5
    return x.astype(np.uint8)
