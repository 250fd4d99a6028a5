"""Change-detection methods behind one interface (`spotdiff.methods.base.Detector`), by name.

- "ssim" `pixelwise.SsimDetector`: the pixel-wise SSIM baseline, no training needed;
- "cyws" `learned.CywsDetector`: the trained CYWS model.

`build_detector(name, params, *, model=None, engine="auto", device=None)` makes one (`METHODS` lists
them). Every detector's `detect(img_a, img_b, ignore_mask=None)` takes numpy uint8 H×W×3 RGB images of
any sizes and returns `(boxes_a, scores_a, boxes_b, scores_b)`, boxes float xyxy in each image's own
pixels; `run` returns the same as `PairDetections`.
"""

from spotdiff.methods.base import Detector, Overlay, PairDetections
from spotdiff.methods.registry import (
           METHODS,
           build_detector,
           is_registry_reference,
           method_class,
           model_methods,
)

__all__ = ["METHODS", "Detector", "Overlay", "PairDetections", "build_detector", "is_registry_reference",
           "method_class", "model_methods"]
