"""The pixel-wise SSIM detector on real photos (scikit-image's bundled samples): what changed is boxed
in both images, what did not change (identical, brightness, a small shift when registered) is not."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from helpers.images import PASTE, astronaut_pair, iou
from spotdiff.boxes import box_areas
from spotdiff.errors import SpotdiffError
from spotdiff.methods import Detector, PairDetections
from spotdiff.methods.base import pair_labels
from spotdiff.methods.pixelwise import SsimDetector
from spotdiff.methods.ssim_map import ssim_map, ssim_map_cv2
from spotdiff.params import SsimParams


@pytest.fixture(scope="module")
def photo_pair() -> tuple[np.ndarray, np.ndarray]:
    return astronaut_pair()


@pytest.fixture(scope="module")
def astronaut(photo_pair) -> np.ndarray:
    return photo_pair[0]


@pytest.fixture(scope="module")
def pasted(photo_pair) -> np.ndarray:
    return photo_pair[1]


@pytest.mark.parametrize("backend", ["opencv", "torch"])
def test_ssim_map_matches_scikit_image(backend):
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    x = skimage.data.camera()[::4, ::4].astype(np.float32) / 255.0
    y = np.clip(x + rng.normal(0, 0.05, x.shape).astype(np.float32), 0, 1)
    _, ref = structural_similarity(x.astype(np.float64), y.astype(np.float64), full=True,
                                   gaussian_weights=True,
                                   sigma=1.5, use_sample_covariance=False, data_range=1.0)
    if backend == "opencv":
        ours = ssim_map_cv2(x, y, sigma=1.5)
    else:
        tx, ty = torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None]
        ours = ssim_map(tx, ty, sigma=1.5)[0, 0].numpy()
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 2e-4


def test_detector_protocol_and_validation():
    det = SsimDetector()
    assert isinstance(det, Detector)
    with pytest.raises(SpotdiffError, match="align"):
        SsimDetector(align="affine")
    assert det.align == "auto"  # registration is on by default
    with pytest.raises(SpotdiffError, match="uint8"):
        det.detect(np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8))


def test_identical_images_give_no_boxes(astronaut):
    ba, sa, bb, sb = SsimDetector().detect(astronaut, astronaut.copy())
    assert ba.shape == (0, 4) and bb.shape == (0, 4) and sa.size == 0 and sb.size == 0


@pytest.mark.parametrize("backend", ["opencv", "torch"])
def test_pasted_object_is_boxed_in_both_images(astronaut, pasted, backend):
    ba, sa, bb, sb = SsimDetector(backend=backend).detect(astronaut, pasted)
    assert len(ba) == 1 and len(bb) == 1
    assert iou(ba[0], PASTE) >= 0.5 and iou(bb[0], PASTE) >= 0.5
    assert 0.3 < sa[0] <= 1.0 and sa[0] == sb[0]


def test_brightness_change_alone_gives_no_box(astronaut):
    det = SsimDetector()
    brighter = np.clip(astronaut.astype(np.int16) + 30, 0, 255).astype(np.uint8)
    darker = (astronaut.astype(np.float32) * 0.7).astype(np.uint8)
    assert len(det.detect(astronaut, brighter)[0]) == 0
    assert len(det.detect(astronaut, darker)[0]) == 0


def test_five_pixel_shift(astronaut, pasted):
    a, b = astronaut[:-5, :-5], astronaut[5:, 5:]  # B's content is A's moved 5 px up-left
    frame = a.shape[0] * a.shape[1]
    unaligned = SsimDetector(align="none").detect(a, b)[0]
    assert box_areas(unaligned).max() > 0.5 * frame  # the failure registration is for
    with _no_warning():
        res = SsimDetector(align="homography").run(a, b)
    assert res.extras["align"] in ("orb+ecc", "sift+ecc", "orb", "sift")
    assert len(res.boxes_a) == 0 or box_areas(res.boxes_a).max() < 0.01 * frame
    # a shifted pair with a real change: boxed where it is in each image
    res = SsimDetector(align="homography").run(a, pasted[5:, 5:])
    assert len(res.boxes_a) >= 1
    x1, y1, x2, y2 = PASTE
    assert iou(res.boxes_a[0], PASTE) >= 0.5
    assert iou(res.boxes_b[0], (x1 - 5, y1 - 5, x2 - 5, y2 - 5)) >= 0.5


class _no_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings(record=True)
        self.records = self._ctx.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        assert not [w for w in self.records if issubclass(w.category, RuntimeWarning)]


def test_registration_fallback_warns_and_uses_identity():
    flat = np.full((96, 96, 3), 128, np.uint8)
    other = flat.copy()
    other[30:60, 30:60] = 20
    with pytest.warns(RuntimeWarning, match="ssim registration"):
        res = SsimDetector(align="homography").run(flat, other)
    assert res.extras["align"] == "identity" and res.extras["notes"]
    assert len(res.boxes_a) == 1 and iou(res.boxes_a[0], (30, 30, 60, 60)) >= 0.5


def test_different_sizes_report_each_images_own_pixels(astronaut, pasted):
    small_b = cv2.resize(pasted, (256, 320), interpolation=cv2.INTER_AREA)  # half width, 0.625 height
    ba, _, bb, _ = SsimDetector().detect(astronaut, small_b)
    assert len(ba) == 1
    x1, y1, x2, y2 = PASTE
    assert iou(ba[0], PASTE) >= 0.5
    assert iou(bb[0], (x1 * 0.5, y1 * 0.625, x2 * 0.5, y2 * 0.625)) >= 0.5
    # and the other way round, A smaller than B
    ba2, _, bb2, _ = SsimDetector().detect(small_b, astronaut)
    assert iou(ba2[0], (x1 * 0.5, y1 * 0.625, x2 * 0.5, y2 * 0.625)) >= 0.5 and iou(bb2[0], PASTE) >= 0.5


def test_max_side_downscale_keeps_original_coordinates(astronaut, pasted):
    det = SsimDetector(SsimParams().model_copy(update={"max_side": 128}))
    res = det.run(astronaut, pasted)
    assert res.extras["working_size"] == [128, 128]
    assert len(res.boxes_a) == 1 and iou(res.boxes_a[0], PASTE) >= 0.5


def test_ignore_mask(astronaut, pasted):
    mask = np.zeros(astronaut.shape[:2], bool)
    x1, y1, x2, y2 = PASTE
    mask[y1 - 10:y2 + 10, x1 - 10:x2 + 10] = True
    assert len(SsimDetector().detect(astronaut, pasted, ignore_mask=mask)[0]) == 0
    half = np.zeros_like(mask)
    half[:, :256] = True  # ignoring elsewhere keeps the change
    assert len(SsimDetector().detect(astronaut, pasted, ignore_mask=half)[0]) == 1
    with pytest.raises(SpotdiffError, match="ignore mask"):
        SsimDetector().detect(astronaut, pasted, ignore_mask=mask[:100])


def test_fixed_threshold_and_min_area(astronaut, pasted):
    b = pasted.copy()
    b[50:53, 50:53] = 0  # a 9-pixel speck
    loose = SsimParams(threshold=0.3, grouping="components", morph_kernel=0, min_area_fraction=0.0)
    assert len(SsimDetector(loose).detect(astronaut, b)[0]) == 2
    strict = loose.model_copy(update={"min_area_fraction": 0.001})  # 262 px at 512×512
    ba = SsimDetector(strict).detect(astronaut, b)[0]
    assert len(ba) == 1 and iou(ba[0], PASTE) >= 0.5


def test_pair_detections_filter_labels_and_json():
    d = PairDetections(np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]),
                       np.array([0.2, 0.9, 0.5]),
                       np.array([[0, 0, 5, 5], [40, 40, 50, 50]]), np.array([0.3, 0.8]), (100, 100), (50, 50))
    # unpaired: boxes matched in normalised coordinates share a number
    assert d.labels_a[0] == d.labels_b[0]
    assert len(set(d.labels_a) | set(d.labels_b)) == 4
    d.filter(top_k=2, min_score=0.25)
    assert d.scores_a.tolist() == [0.9, 0.5] and d.scores_b.tolist() == [0.8, 0.3]
    j = d.to_json("a.png", "b.png")
    assert j["images"][0]["path"] == "a.png" and j["images"][1]["width"] == 50
    assert j["images"][0]["boxes"][0] == [20.0, 20.0, 30.0, 30.0] and j["paired"] is False
    la, lb = pair_labels(np.zeros((0, 4)), np.array([[0, 0, 1, 1]]), (10, 10), (10, 10))
    assert la == [] and lb == [1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_backend_on_gpu_matches_cpu(astronaut, pasted):
    gpu = SsimDetector(device="cuda", backend="torch").run(astronaut, pasted)
    cpu = SsimDetector(device="cpu", backend="opencv").run(astronaut, pasted)
    assert gpu.extras["device"].startswith("cuda")
    np.testing.assert_allclose(gpu.boxes_a, cpu.boxes_a)


def test_pyramid_ssim_is_the_full_map_every_2nd_pixel(astronaut, pasted):
    """`ssim_map_pyramid` (pyrDown + a short half-resolution filter) ≈ `ssim_map_cv2` sampled at
    rows and columns 0, 2, 4, ...; its window is non-negative and sums to 1."""
    from spotdiff.methods.ssim_map import pyramid_kernel, ssim_map_pyramid

    for sigma in (1.0, 1.5, 2.0, 3.0):
        k = pyramid_kernel(sigma)
        assert (k >= 0).all() and abs(float(k.sum()) - 1) < 1e-6
    x = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
    y = cv2.cvtColor(pasted, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
    full = ssim_map_cv2(x, y)[::2, ::2]
    half = ssim_map_pyramid(x, y)
    assert half.shape == full.shape == (256, 256)
    err = np.abs(half - full)
    assert err.mean() < 0.005 and np.percentile(err, 99) < 0.05
    assert np.mean((half < 0.7) != (full < 0.7)) < 0.005  # the same pixels are "different"


def test_map_on_every_2nd_pixel_gives_the_same_boxes(astronaut, pasted):
    """Frames longer than map_side get the map on every 2nd pixel: the same change, the same box
    within the 2-px grid, in both images; map_side 0 keeps every pixel."""
    a = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    b = cv2.resize(pasted, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    b = np.clip(b.astype(np.float32) * 1.08, 0, 255).astype(np.uint8)  # and 8 % brighter
    every = SsimDetector(SsimParams().model_copy(update={"map_side": 0})).run(a, b, keep_maps=True)
    second = SsimDetector().run(a, b, keep_maps=True)
    assert every.extras["map_stride"] == 1 and second.extras["map_stride"] == 2
    assert second.extras["diff"].shape == every.extras["diff"].shape == (1024, 1024)
    assert len(every.boxes_a) == len(second.boxes_a) == 1
    np.testing.assert_allclose(second.boxes_a, every.boxes_a, atol=4)
    np.testing.assert_allclose(second.boxes_b, every.boxes_b, atol=4)
    assert iou(second.boxes_a[0], np.array(PASTE) * 2) >= 0.8
    assert abs(second.scores_a[0] - every.scores_a[0]) < 0.05
    # identical images: nothing, on either grid
    assert len(SsimDetector().detect(a, a.copy())[0]) == 0


def test_map_on_every_2nd_pixel_with_registration_and_ignore_mask(astronaut, pasted):
    """The 2-px grid keeps the overlap and ignore-mask rules: a shifted pair boxes only the change,
    and an ignored change is not boxed."""
    a = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    b = cv2.resize(pasted, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    res = SsimDetector().run(a[:-8, :-8], b[8:, 8:])
    assert res.extras["map_stride"] == 2 and res.extras["align"] != "identity"
    assert len(res.boxes_a) == 1
    x1, y1, x2, y2 = np.array(PASTE) * 2
    assert iou(res.boxes_a[0], (x1, y1, x2, y2)) >= 0.5
    assert iou(res.boxes_b[0], (x1 - 8, y1 - 8, x2 - 8, y2 - 8)) >= 0.5
    mask = np.zeros((1024, 1024), bool)
    mask[y1 - 20:y2 + 20, x1 - 20:x2 + 20] = True
    assert len(SsimDetector().detect(a, b, ignore_mask=mask)[0]) == 0


def test_already_aligned_pair_skips_feature_matching(astronaut, pasted, monkeypatch):
    """An edited copy (no camera motion) is decided "identity" by the quick ECC check alone; a pair
    moved by 3 px and turned 1° still goes through features + ECC and is registered."""
    from spotdiff.methods import registration

    a = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    b = cv2.cvtColor(pasted, cv2.COLOR_RGB2GRAY)
    calls = []
    features = registration._features_homography
    monkeypatch.setattr(registration, "_features_homography",
                        lambda *args, **kw: calls.append(1) or features(*args, **kw))
    H, method, notes = registration.auto_homography(a, b)
    assert method == "identity" and not calls and "no camera motion" in notes[0]
    np.testing.assert_array_equal(H, np.eye(3))
    m = cv2.getRotationMatrix2D((256, 256), 1.0, 1.0)
    m[:, 2] += (3, 0)
    moved = cv2.warpAffine(b, m, (512, 512), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    H, method, _ = registration.auto_homography(a, moved)
    assert calls and method in ("orb+ecc", "orb")
    # H maps B's pixels onto A's: the inverse of the nudge, within a pixel at the corners
    corners = np.float64([[0, 0], [512, 0], [512, 512], [0, 512]])
    back = cv2.perspectiveTransform(cv2.transform(corners[None], m), H)[0]
    assert np.abs(back - corners).max() < 1.0


def test_uint8_colour_fit_is_the_float_one_rounded(astronaut):
    """`apply_colour_fit_u8` (the 2-px grid's full-resolution pass) is `apply_colour_fit` rounded and
    clipped, within a grey level — an exposure fit (affine) and a gamma fit (square terms) alike."""
    from spotdiff.methods.photometric import UNIT_LUT, apply_colour_fit, apply_colour_fit_u8, colour_fit

    region = np.ones(astronaut.shape[:2], bool)
    exposure = np.clip(astronaut * 0.85 + 10, 0, 255).astype(np.uint8)
    gamma = (255 * (astronaut / 255.0) ** 0.8).astype(np.uint8)
    for b in (exposure, gamma):
        fit = colour_fit(None, None, region, raw_x=astronaut, raw_y=b)
        assert fit is not None
        exact = np.clip(apply_colour_fit(cv2.LUT(b, UNIT_LUT), fit) * 255.0, 0, 255)
        assert np.abs(apply_colour_fit_u8(b, fit).astype(np.float64) - exact).max() <= 1.0
