"""The registry of methods and the Detector interface both methods implement: names, building,
errors, display rules, descriptions, overlays."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.models import tiny_cyws
from spotdiff.errors import SpotdiffError
from spotdiff.methods import METHODS, Detector, PairDetections, build_detector, method_class, model_methods
from spotdiff.methods.learned import CywsDetector
from spotdiff.methods.pixelwise import SsimDetector
from spotdiff.models.checkpoint import save_model
from spotdiff.params import Params, SsimParams


def test_registry_names_and_unknown_method():
    assert list(METHODS) == ["ssim", "cyws"] and model_methods() == ["cyws"]
    for name, cls in METHODS.items():
        assert issubclass(cls, Detector) and cls.name == name and cls.title == name.upper()
    with pytest.raises(SpotdiffError) as err:
        build_detector("magic", Params())
    assert str(err.value) == "method: unknown method 'magic'; use one of ssim, cyws"
    with pytest.raises(SpotdiffError, match="^--method: unknown method 'x'; use one of ssim, cyws$"):
        method_class("x", "--method")


def test_build_ssim_from_params_or_its_section():
    det = build_detector("ssim", Params(), device="cpu")
    assert isinstance(det, SsimDetector) and det.params == Params().ssim
    section = SsimParams(max_side=128)
    det = build_detector("ssim", section, device="cpu")
    assert det.params is section and det.reference is None
    assert det.settings()["ssim"]["max_side"] == 128 and "max side 128 px" in det.summary()


def test_build_cyws_from_a_model_or_a_reference(tmp_path):
    model = tiny_cyws(seed=0)
    det = build_detector("cyws", Params(), model=model, device="cpu", engine="eager")
    assert isinstance(det, CywsDetector) and det.settings() == {"engine": "eager"} and det.reference is None
    save_model(model, tmp_path / "m.pt")
    det = build_detector("cyws", Params(), model=tmp_path / "m.pt", device="cpu")
    assert det.reference == str(tmp_path / "m.pt")
    with pytest.raises(SpotdiffError, match="needs a trained model"):
        build_detector("cyws", Params())


def test_ssim_display_overlays_and_batch():
    rng = np.random.default_rng(0)
    a = np.full((96, 128, 3), 90, np.uint8) + rng.integers(0, 4, (96, 128, 3), dtype=np.uint8)
    b = a.copy()
    b[20:60, 30:70] = (240, 240, 60)
    det = SsimDetector(device="cpu")
    dets = det.run(a, b, keep_maps=True)
    assert dets.paired and len(dets) == 1
    shown = det.display(dets, top_k=1)
    assert shown is not dets and shown.paired and shown.boxes_a.tolist() == dets.boxes_a.tolist()
    assert det.display_rule is None
    (overlay,) = det.overlays(a, b, dets, shown)
    assert overlay.image == "a" and overlay.vmin == 0.0 and overlay.vmax == 1.0 and overlay.mask is not None
    assert det.overlays(a, b, det.run(a, b), shown) == []  # no maps kept, nothing to draw
    batch = det.detect_batch([(a, b), (a, a.copy())])
    assert len(batch) == 2 and np.array_equal(batch[0][0], det.detect(a, b)[0]) and len(batch[1][0]) == 0
    # the ignore mask is the detector's own business: nothing reported inside it
    mask = np.zeros((96, 128), bool)
    mask[10:70, 20:80] = True
    assert len(det.detect(a, b, ignore_mask=mask)[0]) == 0
    empty = PairDetections(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 4)), np.zeros(0), (1, 1), (1, 1))
    assert len(det.display(empty)) == 0
