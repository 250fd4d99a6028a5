"""The real-photograph pairs of docs/real_photos/*.png (scikit-image's bundled photos, no download):
an object inpainted away, an object copied elsewhere with a 4 px camera nudge, a cast shadow only
(no change) and a real stereo pair (parallax, no change). Run in an empty folder, then
`spotdiff detect NAME_a.png NAME_b.png --method cyws|ssim`."""

import cv2
import numpy as np
import skimage.data as d
from PIL import Image


def save(name, a, b):
    Image.fromarray(a).save(f"{name}_a.png")
    Image.fromarray(b).save(f"{name}_b.png")
# 1. removed: the object at the top right of the coffee scene inpainted away (OpenCV Telea)
coffee = d.coffee()  # 400x600
mask = np.zeros(coffee.shape[:2], np.uint8)
cv2.ellipse(mask, (470, 110), (75, 60), 0, 0, 360, 255, -1)  # the top-right object region
removed = cv2.inpaint(coffee, mask, 7, cv2.INPAINT_TELEA)
save("removed", coffee, removed)
# 2. moved: the cat's face region pasted 120 px to the left (a moved object), camera nudged 4 px
cat = d.chelsea()  # 300x451
moved = cat.copy()
patch = cat[60:160, 150:260].copy()
moved[60:160, 30:140] = patch
M = np.float32([[1, 0, 4], [0, 1, -3]])
moved = cv2.warpAffine(moved, M, (cat.shape[1], cat.shape[0]), borderMode=cv2.BORDER_REFLECT)
save("moved", cat, moved)
# 3. relit, no change: a soft cast shadow over half the coffee scene
h, w = coffee.shape[:2]
yy, xx = np.mgrid[:h, :w]
shade = 1 - 0.45 * (1 / (1 + np.exp(-(xx - 0.6 * yy - 250) / 25)))
relit = np.clip(coffee * shade[..., None], 0, 255).astype(np.uint8)
save("relit", coffee, relit)
# 4. parallax, no change: the real stereo pair
left, right, _ = d.stereo_motorcycle()
save("stereo", left, right)
