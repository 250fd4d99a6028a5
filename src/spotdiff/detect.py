"""The user's front door in Python: `detect_pair(path_a, path_b, ...)` → the detection report.

`spotdiff detect` (src/spotdiff/commands/detect.py) is a thin shell over `prepare()` + `run()`
here: everything that can fail because of the user's input (paths, images, ignore mask, params,
method, model, options) is checked in `prepare()`, before anything is computed or written.

The method is looked up by name in the registry (`spotdiff.methods`) and used through the `Detector`
interface only: it applies the ignore mask, picks the boxes to draw (`display`) and describes itself.

Report (also the CLI's JSON file):

    {"method": NAME ("ssim", "cyws"), "model": REF or null,
     "images": [{"path", "width", "height", "boxes": [[x1, y1, x2, y2], ...], "scores": [...],
                 "labels": [...]}, {... image B ...}],
     "paired": bool,           # box i in A and box i in B are the same change
     "num_changes": int, "settings": {...}, "diagnostics": {...},
     "timings": {"load_s", "detect_s", "total_s"}, "spotdiff_version": str}

Boxes are float xyxy (x2/y2 exclusive) in each image's own pixels; the same label in A and B
marks the same change.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spotdiff import __version__, tracking
from spotdiff.errors import SpotdiffError
from spotdiff.imageio import MAX_PIXELS, load_image, load_mask
from spotdiff.methods import Detector, PairDetections, build_detector, method_class, model_methods
from spotdiff.methods.engines import ENGINES
from spotdiff.methods.pixelwise import ALIGNS
from spotdiff.params import DEFAULT_PARAMS_PATH, Params, SsimParams, load_params

DEFAULT_MODEL_REF = "models/cyws.pt"


@dataclass
class Request:
    """A validated detection request (images already decoded)."""

    path_a: Path
    path_b: Path
    img_a: np.ndarray
    img_b: np.ndarray
    method: str
    model: str | None
    ssim: SsimParams
    top_k: int | None
    min_score: float | None
    ignore_mask: np.ndarray | None
    ignore_mask_path: Path | None
    detector: Detector
    load_s: float
    settings: dict[str, Any] = field(default_factory=dict)


def resolve_params(params: Params | SsimParams | str | Path | None) -> SsimParams:
    """SsimParams from a Params / SsimParams object, a params.yaml path, or (None) ./params.yaml when
    it exists, else the defaults."""
    if isinstance(params, SsimParams):
        params.validate("ssim")
        return params
    if isinstance(params, Params):
        params.validate()
        return params.ssim
    if params is None:
        return load_params(DEFAULT_PARAMS_PATH).ssim if DEFAULT_PARAMS_PATH.is_file() else Params().ssim
    return load_params(Path(params)).ssim


def parse_top_k(value: Any) -> int | None:
    if value is None:
        return None
    try:
        k = int(str(value).strip())
        ok = str(value).strip().lstrip("+").isdigit() or isinstance(value, int)
    except ValueError:
        ok = False
    if not ok or k < 1:
        raise SpotdiffError(f"--top-k: expected a whole number >= 1, got {value!r}; pass e.g. --top-k 10")
    return k


def parse_min_score(value: Any) -> float | None:
    if value is None:
        return None
    try:
        s = float(str(value).strip())
    except ValueError:
        s = float("nan")
    if not math.isfinite(s) or s < 0:
        raise SpotdiffError(f"--min-score: expected a number >= 0, got {value!r}; pass e.g. --min-score 0.5")
    return s


def default_model_ref() -> str | None:
    """The registry's champion when this repo's MLflow store has one, else models/cyws.pt if present.

    The store is the one `spotdiff.tracking.existing_store` names (env MLFLOW_TRACKING_URI, else the
    repo's); it is only read — never created, and mlflow's process-wide settings are left alone.
    """
    uri, missing = tracking.existing_store()
    if not missing:  # never create a store just to look into it
        root = tracking.find_repo_root()
        try:
            name = load_params(root / "params.yaml").register.model_name
        except SpotdiffError:
            name = Params().register.model_name
        try:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=uri, registry_uri=tracking.registry_uri(uri))
            client.get_model_version_by_alias(name, "champion")
            return f"models:/{name}@champion"
        except Exception:  # no such model / alias, or no reachable store: fall back to the file
            pass
    return DEFAULT_MODEL_REF if Path(DEFAULT_MODEL_REF).is_file() else None


def prepare(path_a: str | Path, path_b: str | Path, method: str = "ssim", model: str | None = None,
            params: Params | SsimParams | str | Path | None = None, top_k: Any = None,
            min_score: Any = None, ignore_mask: str | Path | np.ndarray | None = None,
            align: str | None = None, device: str | None = None, max_pixels: int | None = None,
            engine: str = "auto") -> Request:
    """Validate every input and load the images, the mask and the detector; raises SpotdiffError.

    `model` (methods that use one): a checkpoint path or an MLflow reference; default: the registry's
    champion, else models/cyws.pt. `engine`: how a model's forward pass runs, see
    `spotdiff.methods.engines` (auto = ONNX Runtime on the CPU, eager on a GPU)."""
    t0 = time.perf_counter()
    cls = method_class(method, "--method")
    if align is not None and align not in ALIGNS:
        raise SpotdiffError(f"--align: unknown value {align!r}; use one of {', '.join(ALIGNS)}")
    k = parse_top_k(top_k)
    smin = parse_min_score(min_score)
    if model is not None and not cls.uses_model:
        users = model_methods()
        raise SpotdiffError(f"--model: only used with --method {' or '.join(users)}; drop it or add "
                            f"--method {users[0]}")
    if engine not in ENGINES:
        raise SpotdiffError(f"--engine: unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    ssim = resolve_params(params)
    if align is not None:
        ssim = SsimParams.model_validate({**ssim.model_dump(), "align": align})
    cap = max_pixels or MAX_PIXELS
    path_a, path_b = Path(path_a), Path(path_b)
    img_a = load_image(path_a, max_pixels=cap)
    img_b = load_image(path_b, max_pixels=cap)
    mask = None
    mask_path = None
    if ignore_mask is not None:
        size_a = (img_a.shape[1], img_a.shape[0])
        if isinstance(ignore_mask, np.ndarray):
            mask = ignore_mask.astype(bool)
            if mask.shape != (size_a[1], size_a[0]):
                raise SpotdiffError(f"ignore mask: {mask.shape[1]}×{mask.shape[0]} does not match image A "
                                    f"({size_a[0]}×{size_a[1]}); make it the size of image A")
        else:
            mask_path = Path(ignore_mask)
            mask = load_mask(mask_path, size_a, max_pixels=cap)
    ref = None
    if cls.uses_model:
        ref = model or default_model_ref()
        if ref is None:
            raise SpotdiffError(f"--method {method} needs a trained model: the MLflow registry has no "
                                f"champion and {DEFAULT_MODEL_REF} does not exist; train one "
                                "(`dvc repro`) or pass --model PATH_OR_REGISTRY_REF")
    detector = build_detector(method, ssim, model=ref, engine=engine, device=device)
    return request_for(detector, path_a, path_b, img_a, img_b, method=method, model=model, ssim=ssim,
                       top_k=k, min_score=smin, ignore_mask=mask, ignore_mask_path=mask_path,
                       load_s=time.perf_counter() - t0)


def request_for(detector: Detector, path_a: str | Path, path_b: str | Path, img_a: np.ndarray,
                img_b: np.ndarray, *, method: str, model: str | None, ssim: SsimParams,
                top_k: int | None = None, min_score: float | None = None,
                ignore_mask: np.ndarray | None = None, ignore_mask_path: str | Path | None = None,
                load_s: float = 0.0) -> Request:
    """A Request for images already decoded and a detector already built (validated values: see
    `parse_top_k`, `parse_min_score`), for callers that load one detector for many pairs
    (`spotdiff serve`, `spotdiff detect-batch`); `path_*` name the images in the report."""
    mask_path = None if ignore_mask_path is None else Path(ignore_mask_path)
    mask_setting = str(mask_path) if mask_path else (None if ignore_mask is None else "array")
    settings: dict[str, Any] = {"top_k": top_k, "min_score": min_score, "ignore_mask": mask_setting,
                                **detector.settings()}
    return Request(Path(path_a), Path(path_b), img_a, img_b, method, model, ssim, top_k, min_score,
                   ignore_mask, mask_path, detector, load_s, settings)


def run(req: Request, keep_maps: bool = False) -> tuple[dict[str, Any], PairDetections]:
    """Run the detector of a prepared request → (report dict, PairDetections).

    The report keeps every box that passes --top-k / --min-score (the evaluation protocol); what a
    picture should show is `req.detector.display(dets, req.top_k)`."""
    t0 = time.perf_counter()
    dets = req.detector.run(req.img_a, req.img_b, ignore_mask=req.ignore_mask, keep_maps=keep_maps)
    dets.filter(top_k=req.top_k, min_score=req.min_score)
    detect_s = time.perf_counter() - t0
    diagnostics = {k: v for k, v in dets.extras.items() if k not in ("diff", "valid")}
    report: dict[str, Any] = {
        "method": req.method,
        "model": req.detector.reference,
        **dets.to_json(str(req.path_a), str(req.path_b)),
        "num_changes": len(dets),
        "settings": req.settings,
        "diagnostics": diagnostics,
        "timings": {"load_s": round(req.load_s, 4), "detect_s": round(detect_s, 4),
                    "total_s": round(req.load_s + detect_s, 4)},
        "spotdiff_version": __version__,
    }
    return report, dets


def detect_pair(path_a: str | Path, path_b: str | Path, method: str = "ssim", model: str | None = None,
                params: Params | SsimParams | str | Path | None = None, top_k: int | None = None,
                min_score: float | None = None, ignore_mask: str | Path | np.ndarray | None = None,
                align: str | None = None, device: str | None = None, engine: str = "auto") -> dict[str, Any]:
    """Find the changes between two image files; returns the report (the CLI's JSON, see module doc).

    `params`: Params, SsimParams, a params.yaml path, or None (./params.yaml if present, else the
    defaults). `align` ("auto" | "homography" | "none") overrides `ssim.align`. `ignore_mask`: a mask image
    path or a bool array, the size of image A; white / True regions are never reported.
    """
    req = prepare(path_a, path_b, method=method, model=model, params=params, top_k=top_k,
                  min_score=min_score, ignore_mask=ignore_mask, align=align, device=device, engine=engine)
    report, _ = run(req)
    return report
