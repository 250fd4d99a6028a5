"""Rendered words: the one text renderer of the Synthtext-Change stand-in and the text training pairs.

`render_words(rng, image, n_words)` draws up to `n_words` non-overlapping words in place with
`cv2.putText` (a random Hershey font, size relative to the image width, 1-2 px strokes, anti-aliased)
in a colour that stands out against what lies under it, and returns each word's glyph mask (pixels
the strokes cover, > 60/255) and its tight box (xyxy, x2/y2 exclusive: `spotdiff.boxes`). The word
placement depends on `rng` and the image size only, never on the pixels, so the same rng state
places the same words on any image of that size.
"""

from __future__ import annotations

import cv2
import numpy as np

from spotdiff.boxes import mask_to_box

FONTS = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
         cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN]
WORDS = ["the", "change", "you", "want", "to", "see", "spot", "diff", "open", "exit", "cafe", "shop",
         "north", "road", "stop", "sale", "bank", "hotel", "park", "river", "Oxford", "VGG", "2023",
         "EXIT", "Main St", "No 12", "taxi", "POLICE", "menu", "info", "gate B", "SALE 50%", "bus",
         "pharmacy", "OPEN", "closed", "wifi", "A4", "platform 3", "tickets"]


def render_words(rng: np.random.Generator, image: np.ndarray, n_words: int,
                 tries: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Draw words into `image` (H×W×3 uint8, in place); return (K×4 boxes, K×H×W glyph masks), K <= n_words."""
    h, w = image.shape[:2]
    boxes: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    occupied = np.zeros((h, w), bool)
    for _ in range(n_words):
        for _try in range(tries):
            word = str(rng.choice(WORDS))
            font = FONTS[int(rng.integers(len(FONTS)))]
            scale = float(rng.uniform(0.4, 1.4)) * w / 256
            thick = int(rng.integers(1, 3))
            colour = rng.integers(0, 256, 3)
            (tw, th), base = cv2.getTextSize(word, font, scale, thick)
            if tw + 4 >= w or th + base + 4 >= h:
                continue
            x = int(rng.integers(2, w - tw - 2))
            y = int(rng.integers(th + 2, h - base - 2))
            canvas = np.zeros((h, w), np.uint8)
            cv2.putText(canvas, word, (x, y), font, scale, 255, thick, cv2.LINE_AA)
            mask = canvas > 60
            box = mask_to_box(mask)
            if box is None:
                continue
            x1, y1, x2, y2 = box.astype(int)
            if occupied[max(y1 - 2, 0):y2 + 2, max(x1 - 2, 0):x2 + 2].any():
                continue
            region = image[y1:y2, x1:x2].reshape(-1, 3).mean(0)
            if np.abs(colour - region).sum() < 150:  # keep the text legible against its background
                colour = 255 - region.astype(int)
            cv2.putText(image, word, (x, y), font, scale, [int(c) for c in colour], thick, cv2.LINE_AA)
            occupied[y1:y2, x1:x2] = True
            boxes.append(box)
            masks.append(mask)
            break
    return (np.asarray(boxes, np.float64).reshape(-1, 4),
            np.asarray(masks, bool).reshape(-1, h, w))
