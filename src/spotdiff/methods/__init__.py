"""Change-detection methods behind one interface (`spotdiff.methods.base.Detector`).

- `pixelwise.SsimDetector`: the pixel-wise SSIM baseline (DESIGN §5), no training needed.
- `learned.CywsDetector`: the trained CYWS model (written separately; optional at import time).

Every detector's `detect(img_a, img_b, ignore_mask=None)` takes numpy uint8 H×W×3 RGB images of any
sizes and returns `(boxes_a, scores_a, boxes_b, scores_b)`, boxes float xyxy in each image's own pixels.
"""

from spotdiff.methods.base import Detector, PairDetections

__all__ = ["Detector", "PairDetections"]
