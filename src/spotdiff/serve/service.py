"""What `spotdiff serve` computes, without HTTP: the models that can be chosen, the bounded worker
pool, and one detection → `spotdiff detect --json`'s report (built by `spotdiff.detect.run`).

- Models are loaded once, at start-up, and shared by every request (`ModelChoice`); a request can
  only pick one of them by id — never make the server load a file or registry reference of its own.
- `WorkerPool`: at most `workers` detections run at a time; up to `queue` more wait; beyond that a
  request is answered 503 at once (`Busy`), so N concurrent requests queue instead of exhausting
  memory. Decoding runs in the pool too, so decoded images are bounded by the same numbers.
- A request that waits and runs longer than `timeout_s` is answered 504; its worker finishes the
  computation it started (a thread cannot be killed) and stays counted until then.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from spotdiff.detect import default_model_ref, parse_min_score, parse_top_k, request_for, run
from spotdiff.errors import SpotdiffError
from spotdiff.methods import Detector, build_detector, method_class
from spotdiff.methods.learned import CywsDetector, is_registry_reference
from spotdiff.methods.pixelwise import ALIGNS
from spotdiff.models.official import PUBLISHED_FILE_NAME
from spotdiff.params import SsimParams
from spotdiff.render import heatmap_overlay
from spotdiff.serve.uploads import UploadError, decode_image, decode_mask

INCLUDES = ("shown", "maps")  # what the page asks for beyond the CLI's report
MAP_MAX_SIDE = 1024  # difference-map pictures are sent at most this large (the page scales them)


@dataclass(frozen=True)
class Limits:
    """A public service's limits (`spotdiff serve` options)."""

    max_upload_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 50_000_000
    workers: int = 2
    queue: int = 32
    timeout_s: float = 120.0


@dataclass
class ModelChoice:
    """A learned model the server was started with (shared by every request)."""

    id: str  # what a request names in `model`: a registry reference itself, a checkpoint's file name
    kind: str  # "registry" | "checkpoint" | "published"
    detector: CywsDetector | None = None
    error: str | None = None  # why it could not be loaded (the default champion only)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"id": self.id, "method": "cyws", "kind": self.kind,
                                "available": self.detector is not None}
        if self.detector is not None:
            info["summary"] = self.detector.summary()
            info["engine"] = self.detector.engine_name
        if self.error:
            info["error"] = self.error
        return info


def _kind(ref: str) -> str:
    if is_registry_reference(ref):
        return "registry"
    return "published" if Path(ref).name == PUBLISHED_FILE_NAME else "checkpoint"


def _public_id(ref: str, taken: set[str]) -> str:
    """How clients name a model: a registry reference as it is, a checkpoint by its file name (the
    server's folders are nobody's business), made unique with -2, -3, ..."""
    base = ref if is_registry_reference(ref) else Path(ref).name
    name, k = base, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    taken.add(name)
    return name


def load_models(refs: list[str], engine: str = "auto", device: str | None = None) -> list[ModelChoice]:
    """The models to serve: each of `refs` (a bad one raises SpotdiffError: the server does not start),
    or with none given the registry champion / models/cyws.pt when there is one (a failure to load it
    is kept as the choice's `error`, and the page offers ssim only)."""
    choices: list[ModelChoice] = []
    taken: set[str] = set()
    if refs:
        for ref in dict.fromkeys(refs):
            det = build_detector("cyws", model=ref, engine=engine, device=device)
            det.engine  # noqa: B018 - build the engine (ONNX export) now, not in the first request
            choices.append(ModelChoice(_public_id(ref, taken), _kind(ref), det))
        return choices
    ref = default_model_ref()
    if ref is None:
        return []
    try:
        det = build_detector("cyws", model=ref, engine=engine, device=device)
        det.engine  # noqa: B018
        choices.append(ModelChoice(_public_id(ref, taken), _kind(ref), det))
    except SpotdiffError as exc:  # the message names the file: the operator reads it at start-up
        choices.append(ModelChoice(_public_id(ref, taken), _kind(ref), None, str(exc)))
    return choices


class Busy(Exception):
    """The pool and its queue are full."""


class WorkerPool:
    """At most `workers` jobs at a time, at most `queue` more waiting (see the module docstring)."""

    def __init__(self, workers: int, queue: int) -> None:
        self.workers, self.queue = workers, queue
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spotdiff-detect")
        self._lock = threading.Lock()
        self.pending = 0  # running + waiting
        self.served = 0

    def _done(self, _fut: Future) -> None:
        with self._lock:
            self.pending -= 1
            self.served += 1

    def full(self) -> bool:
        return self.pending >= self.workers + self.queue

    def submit(self, fn: Callable[[], Any]) -> Future:
        with self._lock:
            if self.full():
                raise Busy()
            self.pending += 1
        fut = self._pool.submit(fn)
        fut.add_done_callback(self._done)
        return fut

    async def run(self, fn: Callable[[], Any], timeout_s: float) -> Any:
        """`fn()` in the pool; raises Busy (full), asyncio.TimeoutError (waited + ran > timeout_s)."""
        fut = self.submit(fn)
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), timeout_s)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class Upload:
    field: str
    filename: str | None
    data: bytes


@dataclass
class DetectForm:
    """`POST /v1/detect`'s fields, as received (strings; validated by `Service.detect`)."""

    image_a: Upload
    image_b: Upload
    method: str = "ssim"
    model: str | None = None
    top_k: str | None = None
    min_score: str | None = None
    align: str | None = None
    ignore_mask: Upload | None = None
    include: str | None = None  # comma-separated INCLUDES


def _png_data_url(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fit(img: np.ndarray, max_side: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    s = max_side / max(h, w)
    if s >= 1:
        return img
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


@dataclass
class Service:
    """The models, the limits and the pool of one `spotdiff serve`."""

    ssim: SsimParams
    models: list[ModelChoice] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        self.pool = WorkerPool(self.limits.workers, self.limits.queue)

    def catalogue(self) -> dict[str, Any]:
        """`GET /v1/models`: the methods and models a request can choose."""
        return {
            "methods": [{"id": "ssim", "title": method_class("ssim").title, "uses_model": False},
                        {"id": "cyws", "title": method_class("cyws").title, "uses_model": True}],
            "models": [m.describe() for m in self.models],
            "default_model": next((m.id for m in self.models if m.detector is not None), None),
            "limits": {"max_upload_bytes": self.limits.max_upload_bytes, "max_pixels": self.limits.max_pixels,
                       "workers": self.limits.workers, "queue": self.limits.queue,
                       "timeout_s": self.limits.timeout_s},
        }

    # ------------------------------------------------------------------ validation (before decoding)

    def _detector(self, form: DetectForm) -> tuple[Detector, str | None]:
        """The detector a request asks for, and the model id it answers with."""
        cls = method_class(form.method, "method")
        if not cls.uses_model:
            if form.model:
                raise SpotdiffError("model: only used with method cyws; drop it or choose method cyws")
            if form.align is not None and form.align not in ALIGNS:
                raise SpotdiffError(f"align: unknown value {form.align!r}; use one of {', '.join(ALIGNS)}")
            ssim = self.ssim if form.align is None else SsimParams.model_validate(
                {**self.ssim.model_dump(), "align": form.align})
            return build_detector(form.method, ssim), None
        if form.align is not None:
            raise SpotdiffError("align: only used with method ssim; drop it")
        usable = [m for m in self.models if m.detector is not None]
        if not usable:
            raise SpotdiffError("method cyws: this server has no learned model; start it with "
                                "`spotdiff serve --model REF` or register a champion, or use method ssim")
        if not form.model:
            return usable[0].detector, usable[0].id  # type: ignore[return-value]
        for m in usable:
            if m.id == form.model:
                return m.detector, m.id  # type: ignore[return-value]
        raise SpotdiffError(f"model: {form.model!r} is not served here; choose one of "
                            f"{', '.join(m.id for m in usable)} (GET /v1/models)")

    @staticmethod
    def _includes(value: str | None) -> set[str]:
        items = {v.strip() for v in (value or "").split(",") if v.strip()}
        unknown = items - set(INCLUDES)
        if unknown:
            raise SpotdiffError(f"include: unknown item(s) {', '.join(sorted(unknown))}; use any of "
                                f"{', '.join(INCLUDES)}, comma-separated")
        return items

    # ------------------------------------------------------------------ one detection (in a worker)

    def detect(self, form: DetectForm) -> dict[str, Any]:
        """One detection → the report of `spotdiff detect --json` (+ `shown` / `maps` when included).
        Raises SpotdiffError (UploadError carries its HTTP status)."""
        import time

        t0 = time.perf_counter()
        includes = self._includes(form.include)
        k = parse_top_k(form.top_k)
        smin = parse_min_score(form.min_score)
        detector, model_id = self._detector(form)
        lim = self.limits
        img_a = decode_image(form.image_a.data, "image_a", form.image_a.filename, lim.max_upload_bytes,
                             lim.max_pixels)
        img_b = decode_image(form.image_b.data, "image_b", form.image_b.filename, lim.max_upload_bytes,
                             lim.max_pixels)
        mask = None
        if form.ignore_mask is not None:
            m = form.ignore_mask
            mask = decode_mask(m.data, "ignore_mask", m.filename, (img_a.shape[1], img_a.shape[0]),
                               lim.max_upload_bytes, lim.max_pixels)
        name_a = form.image_a.filename or "image_a"
        name_b = form.image_b.filename or "image_b"
        req = request_for(detector, name_a, name_b, img_a, img_b, method=form.method, model=form.model,
                          ssim=self.ssim, top_k=k, min_score=smin, ignore_mask=mask,
                          ignore_mask_path=None if mask is None else (form.ignore_mask.filename or "upload"),
                          load_s=time.perf_counter() - t0)
        report, dets = run(req, keep_maps="maps" in includes)
        report["model"] = model_id  # the id clients choose by (GET /v1/models), not a server path
        report["images"][0]["path"], report["images"][1]["path"] = name_a, name_b
        if "shown" in includes or "maps" in includes:
            shown = detector.display(dets, k)
            if "shown" in includes:
                report["shown"] = {**shown.to_json(name_a, name_b), "rule": detector.display_rule}
            if "maps" in includes:
                report["maps"] = self._maps(detector, img_a, img_b, dets, shown)
        return report

    def _maps(self, detector: Detector, img_a: np.ndarray, img_b: np.ndarray, dets, shown) -> list[dict]:
        """The page's overlays: the method's maps as pictures (ssim: difference on A); for a CYWS
        model, the whole co-attention grid, so a click in A shows where it looks in B with no request."""
        maps = []
        if isinstance(detector, CywsDetector):
            grid = detector.attention_grid(img_a, img_b)
            if grid is not None:
                h, w = grid.shape[:2]
                maps.append({"kind": "attention", "image": "b", "grid": [h, w],
                             "caption": "co-attention in B from the clicked point of A",
                             "a_to_b": np.round(grid.reshape(h * w, h * w), 5).tolist()})
            return maps
        for overlay in detector.overlays(img_a, img_b, dets, shown):
            base = img_a if overlay.image == "a" else img_b
            pic = heatmap_overlay(base, overlay.heat, alpha=0.55, vmin=overlay.vmin, vmax=overlay.vmax,
                                  mask=overlay.mask)
            maps.append({"kind": "picture", "image": overlay.image, "caption": overlay.caption,
                         "png": _png_data_url(_fit(pic, MAP_MAX_SIDE))})
        return maps


__all__ = ["Busy", "DetectForm", "Limits", "ModelChoice", "Service", "Upload", "UploadError", "WorkerPool",
           "load_models"]
