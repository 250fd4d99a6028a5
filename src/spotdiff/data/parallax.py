"""Two views of a layered 3D scene from two camera centres: parallax, occlusion and disocclusion.

The one renderer of the Kubric-Change stand-in (`spotdiff.data.standins`) and of the parallax
training pairs (`spotdiff.data.pairs`, `pairs.parallax_fraction`).

The scene is seen by a reference pinhole camera K = [[f, 0, w/2], [0, f, h/2], [0, 0, 1]] (f = the
longer side: a 53° field of view); every texture is given in the reference image's frame. It holds:
- a back plane (a floor or wall, tilted up to ~20° about both axes, depth 1 on the optical axis)
  textured with the background image (extended by reflection beyond its edges);
- cards: flat objects parallel to the reference image at nearer depths (0.4-0.85 of the back
  plane's), each a texture and a mask in the reference frame; a card may be present in one view only
  (a change).

A view is the reference camera rotated by R and moved by t (X_view = R X + t). A point on the plane
n·X = d maps from the reference image to the view by the plane-induced homography
H = K (R + t nᵀ / d) K⁻¹, so each plane moves by its own homography: near cards shift more than the
back plane (parallax), a card hides different parts of what lies behind it in each view, and what one
view hides the other shows (occlusion / disocclusion). Planes are drawn back to front (painter's
algorithm) with premultiplied-alpha bilinear sampling. No single homography aligns two such views
(tests/test_testsets.py fits the best one to true correspondences and shows what it leaves).

For each card and view, `render_view` returns its visible mask: where the view sees the card (a card
absent from the view: where the view would see it, that is, where its place is not hidden by a
nearer card that is present). A changed card's boxes in each image are the boxes of that mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

DEPTH_RANGE = (0.4, 0.85)  # cards, as a fraction of the back plane's depth on the optical axis


@dataclass
class Camera:
    rotation: np.ndarray  # 3×3
    translation: np.ndarray  # (3,), in units of the back plane's depth


@dataclass
class Card:
    """A flat object parallel to the reference image at `depth`, drawn in the views where `present`."""

    pixels: np.ndarray  # H×W×3 uint8, reference frame (only the pixels under `mask` are used)
    mask: np.ndarray  # H×W bool
    depth: float
    present: tuple[bool, bool] = (True, True)
    _prepared: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def prepared(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(xyxy box of the mask, premultiplied RGBA float32 crop of that box), or None if empty."""
        if self._prepared is None:
            ys = np.flatnonzero(self.mask.any(axis=1))
            if not ys.size:
                self._prepared = (None,)
            else:
                xs = np.flatnonzero(self.mask.any(axis=0))
                x1, y1, x2, y2 = int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1
                alpha = self.mask[y1:y2, x1:x2, None].astype(np.float32)
                rgba = np.concatenate([self.pixels[y1:y2, x1:x2].astype(np.float32) * alpha, alpha], axis=2)
                self._prepared = (np.array([x1, y1, x2, y2], np.float64), rgba)
        return None if self._prepared[0] is None else self._prepared  # type: ignore[return-value]


@dataclass
class Scene:
    background: np.ndarray  # H×W×3 uint8 texture of the back plane (reference frame)
    normal: np.ndarray  # (3,) unit normal of the back plane, n·X = distance
    distance: float
    cards: list[Card] = field(default_factory=list)


def intrinsics(height: int, width: int) -> np.ndarray:
    f = float(max(height, width))
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], np.float64)


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    r, _ = cv2.Rodrigues(np.array([rx, ry, rz], np.float64))
    return r


def identity_camera() -> Camera:
    return Camera(np.eye(3), np.zeros(3))


def random_back_plane(rng: np.random.Generator, tilt: float = 0.35) -> tuple[np.ndarray, float]:
    """(unit normal, distance) of a plane at depth 1 on the optical axis, tilted up to atan(tilt)."""
    normal = np.array([rng.uniform(-tilt, tilt), rng.uniform(-tilt, tilt), 1.0])
    normal /= np.linalg.norm(normal)
    return normal, float(normal[2])


def random_cameras(rng: np.random.Generator, baseline: tuple[float, float] = (0.04, 0.09),
                   max_angle_deg: float = 1.5) -> tuple[Camera, Camera]:
    """Two camera poses whose centres are `baseline` apart (sideways / up-down, some forward motion),
    each turned by up to `max_angle_deg` about every axis."""
    a = np.deg2rad(max_angle_deg)
    t0 = np.array([rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03)])
    direction = rng.uniform(0, 2 * np.pi)
    step = rng.uniform(*baseline)
    t1 = t0 + np.array([step * np.cos(direction), step * np.sin(direction), rng.uniform(-0.04, 0.04)])
    return tuple(Camera(_rotation(*rng.uniform(-a, a, 3)), t) for t in (t0, t1))  # type: ignore[return-value]


def plane_homography(normal: np.ndarray, distance: float, camera: Camera, k: np.ndarray) -> np.ndarray:
    """Reference-image pixels -> view pixels for points on the plane n·X = distance."""
    h = k @ (camera.rotation + np.outer(camera.translation, normal) / distance) @ np.linalg.inv(k)
    return h / h[2, 2]


def card_homography(depth: float, camera: Camera, k: np.ndarray) -> np.ndarray:
    return plane_homography(np.array([0.0, 0.0, 1.0]), depth, camera, k)


def _roi(hom: np.ndarray, box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int] | None:
    x1, y1, x2, y2 = box
    corners = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float64)
    moved = cv2.perspectiveTransform(corners[None], hom)[0]
    ox1, oy1 = np.floor(moved.min(0)).astype(int) - 2
    ox2, oy2 = np.ceil(moved.max(0)).astype(int) + 2
    ox1, oy1, ox2, oy2 = max(ox1, 0), max(oy1, 0), min(ox2, width), min(oy2, height)
    if ox2 <= ox1 or oy2 <= oy1:
        return None
    return int(ox1), int(oy1), int(ox2), int(oy2)


def render_view(scene: Scene, camera: Camera, view: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The image one camera sees (H×W×3 uint8) and each card's visible mask (H×W bool, module docstring)."""
    h, w = scene.background.shape[:2]
    k = intrinsics(h, w)
    back = plane_homography(scene.normal, scene.distance, camera, k)
    out = cv2.warpPerspective(scene.background, back, (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT).astype(np.float32)
    order = sorted(range(len(scene.cards)), key=lambda i: -scene.cards[i].depth)  # far to near
    visible: list[np.ndarray] = [np.zeros((h, w), bool) for _ in scene.cards]
    for i in order:
        card = scene.cards[i]
        prepared = card.prepared()
        if prepared is None:
            continue
        box, rgba = prepared
        hom = card_homography(card.depth, camera, k)
        roi = _roi(hom, box, h, w)
        if roi is None:
            continue
        x1, y1, x2, y2 = roi
        shift = np.array([[1, 0, -x1], [0, 1, -y1], [0, 0, 1]], np.float64)
        crop = np.array([[1, 0, box[0]], [0, 1, box[1]], [0, 0, 1]], np.float64)  # crop -> reference frame
        warped = cv2.warpPerspective(rgba, shift @ hom @ crop, (x2 - x1, y2 - y1), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_CONSTANT)
        a = warped[..., 3:4]
        cover = a[..., 0] >= 0.5
        visible[i][y1:y2, x1:x2] = cover
        if card.present[view]:
            region = out[y1:y2, x1:x2]
            region *= 1 - a
            region += warped[..., :3]  # premultiplied
            for j in order[:order.index(i)]:  # a present card hides what lies behind it
                visible[j][y1:y2, x1:x2] &= ~cover
    return (out + 0.5).clip(0, 255).astype(np.uint8), visible


def render_change_pair(rng: np.random.Generator, scene: Scene, min_pixels: int = 30, tries: int = 12
                       ) -> tuple[list[np.ndarray], list[list[np.ndarray]], tuple[Camera, Camera]]:
    """Both views of `scene` from two random camera centres, such that every changed card (present in
    one view only) shows in both views (its visible mask has >= `min_pixels` pixels in each).

    Returns ([image_0, image_1], [[mask per changed card] for view 0, ... view 1], cameras); the
    changed cards are those of `scene.cards` not present in both views, in order. When `tries`
    camera draws all hide a changed card, the changed cards are brought nearest and both views are
    the reference camera (no parallax for that pair, but every changed card shows in both)."""
    changed = [i for i, c in enumerate(scene.cards) if not all(c.present)]

    def attempt(cameras):
        images, masks = [], []
        for view, cam in enumerate(cameras):
            image, visible = render_view(scene, cam, view)
            images.append(image)
            masks.append([visible[i] for i in changed])
        ok = all(int(m.sum()) >= min_pixels for view_masks in masks for m in view_masks)
        return ok, images, masks

    for _ in range(tries):
        cameras = random_cameras(rng)
        ok, images, masks = attempt(cameras)
        if ok:
            return images, masks, cameras
    nearest = min([c.depth for c in scene.cards] + [DEPTH_RANGE[0]])
    for n, i in enumerate(changed):
        scene.cards[i].depth = nearest * (0.95 - 0.01 * n)
    cameras = (identity_camera(), identity_camera())
    _, images, masks = attempt(cameras)
    return images, masks, cameras
