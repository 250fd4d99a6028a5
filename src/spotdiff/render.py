"""Drawing for people: numbered boxes, side-by-side panels with a header, heatmap overlays.

All functions take and return numpy uint8 H×W×3 RGB images and never modify their inputs. Line
widths and font sizes scale with the image, so the drawings stay readable from thumbnails to
multi-megapixel photos. The same number on a box in A and in B means the same change.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Distinct, colour-blind-friendly-ish colours (Okabe–Ito + extras); box k gets PALETTE[(k-1) % n].
PALETTE = [
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
    (213, 94, 0), (204, 121, 167), (255, 0, 0), (0, 255, 255), (255, 0, 255),
]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=max(8, int(size)))
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _scale(img: np.ndarray) -> float:
    """Drawing scale: 1.0 for a ~500-px image, proportional to the longer side."""
    return max(img.shape[0], img.shape[1]) / 500.0


def color_for(label: int | str) -> tuple[int, int, int]:
    """The palette colour of box number `label` (any other label: a stable colour of its own)."""
    if isinstance(label, (int, np.integer)):
        return PALETTE[(int(label) - 1) % len(PALETTE)]
    return PALETTE[sum(str(label).encode()) % len(PALETTE)]


def draw_boxes(image: np.ndarray, boxes: np.ndarray | Sequence, labels: Sequence[int | str] | None = None,
               scores: Sequence[float] | None = None, color: tuple[int, int, int] | None = None,
               show_scores: bool = True) -> np.ndarray:
    """Draw xyxy boxes with a tag each ("#k" for integer labels, 1..N by default, or the label's text),
    plus the score when given; returns a new image."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).convert("RGB")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = list(labels) if labels is not None else list(range(1, len(boxes) + 1))
    s = _scale(image)
    width = max(2, round(2.5 * s))
    font = _font(max(12, round(16 * s)))
    draw = ImageDraw.Draw(img)
    W, H = img.size
    for i, box in enumerate(boxes):
        label = labels[i]
        col = color or color_for(label)
        if not np.all(np.isfinite(box)):
            continue
        # Whole pixels, clipped to the image, at least 1 px wide and high: a zero-width, reversed or
        # out-of-image box is still drawn (as a 1-px mark at its place), never raises.
        x1, y1, x2, y2 = np.clip(box, -1e9, 1e9)
        x1, y1, x2, y2 = int(np.floor(x1)), int(np.floor(y1)), int(np.ceil(x2)), int(np.ceil(y2))
        x1, y1 = min(max(0, x1), W - 1), min(max(0, y1), H - 1)
        x2, y2 = max(min(W, x2), x1 + 1), max(min(H, y2), y1 + 1)
        # dark outline under the coloured box keeps it visible on bright and dark backgrounds
        draw.rectangle([x1 - 1, y1 - 1, x2, y2], outline=(0, 0, 0), width=width + 2)
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=col, width=width)
        text = f"#{label}" if isinstance(label, (int, np.integer)) else str(label)
        if show_scores and scores is not None and i < len(scores):
            text += f" {float(scores[i]):.2f}"
        tb = draw.textbbox((0, 0), text, font=font)
        tw, th = tb[2] - tb[0], tb[3] - tb[1]
        pad = max(2, round(2 * s))
        tx = min(max(0.0, x1), W - tw - 2 * pad)
        ty = y1 - th - 2 * pad if y1 - th - 2 * pad >= 0 else min(y1 + width, H - th - 2 * pad)
        draw.rectangle([tx, ty, tx + tw + 2 * pad, ty + th + 2 * pad], fill=col)
        draw.text((tx + pad - tb[0], ty + pad - tb[1]), text, fill=(0, 0, 0), font=font)
    return np.asarray(img)


def _fit(img: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img
    shrink = height < h and width < w
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def side_by_side(images: Sequence[np.ndarray], header: str = "", captions: Sequence[str] | None = None,
                 max_height: int = 1024, gap: int = 8, max_width: int = 4096) -> np.ndarray:
    """Place images next to each other at one height (≤ max_height), captions under a header line.

    The panel is never wider than `max_width` (nor taller than `max_height` plus its header), whatever
    the images' shapes: small images are brought up to 64 px high when the width allows, and a tile
    whose aspect ratio cannot fit at 1 px high is squeezed to its share of the width."""
    from PIL import Image, ImageDraw

    n = len(images)
    avail = max(n, max_width - gap * (n + 1))
    ratios = [im.shape[1] / max(1, im.shape[0]) for im in images]
    height = max(min(max_height, max(im.shape[0] for im in images)), 64)
    height = max(1, min(height, int(avail / sum(ratios))))
    share = avail // n
    sizes = [min(max(1, round(r * height)), share) if r * height > avail else max(1, round(r * height))
             for r in ratios]
    if sum(sizes) > avail:  # rounding, or several wide tiles: each gets its share
        sizes = [min(w, share) for w in sizes]
    tiles = [_fit(np.ascontiguousarray(im, dtype=np.uint8), height, w) for im, w in zip(images, sizes)]
    total_w = sum(t.shape[1] for t in tiles) + gap * (len(tiles) + 1)
    s = max(0.6, height / 500.0)
    font = _font(max(12, round(16 * s)))
    line_h = round(font.size * 1.5) if hasattr(font, "size") else 16
    header_lines = [ln for ln in header.splitlines() if ln] if header else []
    top = (gap + line_h * len(header_lines) + (line_h if captions else 0)
           + (gap if header_lines or captions else 0))
    canvas = Image.new("RGB", (total_w, top + height + gap), (32, 32, 32))
    draw = ImageDraw.Draw(canvas)
    y = gap
    for ln in header_lines:
        draw.text((gap, y), _ellipsize(draw, ln, font, total_w - 2 * gap), fill=(255, 255, 255), font=font)
        y += line_h
    x = gap
    for i, t in enumerate(tiles):
        if captions and i < len(captions):
            draw.text((x, y), _ellipsize(draw, captions[i], font, t.shape[1]), fill=(200, 200, 200),
                      font=font)
        canvas.paste(Image.fromarray(t), (x, top))
        x += t.shape[1] + gap
    return np.asarray(canvas)


def _ellipsize(draw, text: str, font, max_w: int) -> str:
    if draw.textlength(text, font=font) <= max_w:
        return text
    while len(text) > 4 and draw.textlength("..." + text, font=font) > max_w:
        text = text[1:]
    return "..." + text  # ASCII: the default font has no ellipsis glyph


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, vmin: float | None = None,
                    vmax: float | None = None, colormap: int | None = None,
                    mask: np.ndarray | None = None) -> np.ndarray:
    """Blend a colour-mapped H'×W' map (difference or attention) over an image; any sizes.

    Values are scaled from [vmin, vmax] (default: the map's min and max) to the colormap (OpenCV
    JET by default); where `mask` (same size as `heat`) is False the image shows through unchanged.
    """
    import cv2

    img = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = img.shape[:2]
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32))
    lo = float(heat.min()) if vmin is None else float(vmin)
    hi = float(heat.max()) if vmax is None else float(vmax)
    norm = np.clip((heat - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    norm = cv2.resize(norm, (w, h), interpolation=cv2.INTER_LINEAR)
    cmap = cv2.COLORMAP_JET if colormap is None else colormap
    coloured = cv2.applyColorMap((norm * 255).astype(np.uint8), cmap)
    coloured = cv2.cvtColor(coloured, cv2.COLOR_BGR2RGB)
    out = cv2.addWeighted(img, 1.0 - alpha, coloured, alpha, 0.0)
    if mask is not None:
        m = cv2.resize(np.asarray(mask, dtype=np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        out = np.where(m[..., None], out, img)
    return out


def outline_boxes(image: np.ndarray, boxes: np.ndarray | Sequence,
                  color: tuple[int, int, int] = (255, 0, 0)) -> np.ndarray:
    """1-px outlines of xyxy boxes, no tags: for pictures at a model's input size, where tags would
    hide the image."""
    import cv2

    out = np.ascontiguousarray(image.copy())
    for x1, y1, x2, y2 in np.asarray(boxes).reshape(-1, 4):
        top_left = (int(round(x1)), int(round(y1)))
        bottom_right = (int(round(x2)) - 1, int(round(y2)) - 1)  # cv2 corners are inclusive
        cv2.rectangle(out, top_left, bottom_right, color, 1)
    return out


def pair_grid(rows: Sequence[tuple[np.ndarray, np.ndarray]], side: int, gap: int = 4) -> np.ndarray:
    """Rows of (A, B) images of `side`² each, A | B per row, separated by white `gap`-px lines; one white
    row when there is none."""
    if not rows:
        return np.full((side, 2 * side + gap, 3), 255, dtype=np.uint8)
    sep = np.full((side, gap, 3), 255, dtype=np.uint8)
    lines = [np.concatenate([a, sep, b], axis=1) for a, b in rows]
    between = np.full((gap, lines[0].shape[1], 3), 255, dtype=np.uint8)
    parts = [part for line in lines for part in (line, between)][:-1]
    return np.concatenate(parts, axis=0)
