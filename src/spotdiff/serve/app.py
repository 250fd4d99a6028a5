"""The FastAPI app of `spotdiff serve`: the page, `POST /v1/detect`, `GET /v1/models`, `GET /healthz`.

Every refusal is a 4xx with one JSON line `{"error": "<the CLI's one-line message>"}` — never a stack
trace: 400 bad option or input, 413 upload or image too large, 415 not an image (by content), 422
unreadable image or missing field, 503 queue full (`Retry-After`), 504 over the request timeout; an
unexpected failure is a 500 whose body says only that (the traceback goes to the server's log).
The page and the API docs (`/docs`, Swagger UI from fastapi-offline) are served by the app itself:
no CDN, so it works on a network without internet.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional

from fastapi import File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from spotdiff import __version__
from spotdiff.errors import SpotdiffError
from spotdiff.serve.service import Busy, DetectForm, Service, Upload
from spotdiff.serve.uploads import UploadError

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("spotdiff.serve")


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


class BodyTooLarge(Exception):
    """Raised by `BodyLimit`'s receive once a streamed body passes the cap."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"request body: more than {max_bytes:,} bytes; send smaller images "
                         "(see GET /v1/models for the limits)")


class BodyLimit:
    """ASGI middleware: refuse a request body larger than `max_bytes` with 413 — from Content-Length
    before reading anything, or while a chunked body streams in — so an upload cannot fill the disk
    or memory before the form is parsed; and answer 504 to a request not answered within
    `timeout_s` from its first byte (a slow upload included: the detection's own wait in the pool is
    bounded by the same number inside the endpoint)."""

    def __init__(self, app, max_bytes: int, timeout_s: float | None = None) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = BodyTooLarge(self.max_bytes)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _error(413, str(too_large))(scope, receive, send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise too_large
            return msg

        async def tracking_send(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            # the API only: a page or docs file going out slowly to a slow client is no one's problem
            timeout = self.timeout_s if scope.get("path", "").startswith("/v1/") else None
            await asyncio.wait_for(self.app(scope, limited_receive, tracking_send), timeout)
        except asyncio.TimeoutError:
            if started:
                raise
            return await _error(504, f"request: not answered within the server's {self.timeout_s:g} s limit "
                                     "(a slow upload or a long queue); retry, with smaller images")(
                scope, receive, send)
        except Exception as exc:
            if not started and _caused_by(exc, BodyTooLarge):
                return await _error(413, str(too_large))(scope, receive, send)
            raise


def _caused_by(exc: BaseException, kind: type) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, kind):
            return True
        if isinstance(exc, BaseExceptionGroup):
            return any(_caused_by(e, kind) for e in exc.exceptions)
        exc = exc.__cause__ or exc.__context__
    return False


def create_app(service: Service) -> FastAPIOffline:
    """The app serving `service` (its models already loaded)."""

    @asynccontextmanager
    async def lifespan(_app):
        yield
        service.pool.shutdown()

    app = FastAPIOffline(
        lifespan=lifespan,
        title="spotdiff",
        version=__version__,
        description="Spot the differences between two images: upload a pair, get the changes boxed in "
                    "both. The page is at `/`; `POST /v1/detect` answers the JSON of "
                    "`spotdiff detect --json`.",
    )
    limits = service.limits
    # the endpoint answers its own 504 first (timeout_s from entering the pool); this one catches the rest
    app.add_middleware(BodyLimit, max_bytes=3 * limits.max_upload_bytes + 1024 * 1024,
                       timeout_s=limits.timeout_s + 1.0)
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
        what = first.get("msg", "invalid request").rstrip(".").lower()
        fix = ("send image_a and image_b as multipart/form-data files" if where in ("image_a", "image_b")
               else "see /docs for the fields")
        return _error(422, f"{where or 'request'}: {what}; {fix}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI turns a failure while reading the form into a 400; a body cut off at the cap is a 413
        cut = next((e for e in (exc.__cause__, exc.__context__) if isinstance(e, BodyTooLarge)), None)
        if cut is not None:
            return _error(413, str(cut))
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _error(500, "internal error; the server's log has the details")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", summary="Liveness: the server answers and its models are loaded")
    async def healthz() -> dict:
        return {"status": "ok", "version": __version__,
                "models": sum(m.detector is not None for m in service.models),
                "pending": service.pool.pending, "served": service.pool.served}

    @app.get("/v1/models", summary="The methods and models a request can choose, and the limits")
    async def models() -> dict:
        return service.catalogue()

    @app.post("/v1/detect", summary="Box the changes between two images",
              description="Multipart form: two image files and options. Answers the JSON of "
                          "`spotdiff detect --json` (boxes xyxy in each image's own pixels; the same label "
                          "in A and B marks the same change). `include=shown,maps` adds what the page "
                          "draws: `shown` (the boxes the method shows people) and `maps` (difference "
                          "map / co-attention grid).",
              responses={400: {"description": "bad option or input"}, 413: {"description": "too large"},
                         415: {"description": "not an image"}, 422: {"description": "unreadable image"},
                         503: {"description": "queue full"}, 504: {"description": "timed out"}})
    async def detect(
        image_a: UploadFile = File(..., description="First image (PNG, JPEG, WebP, TIFF, BMP, GIF)."),
        image_b: UploadFile = File(..., description="Second image; any size."),
        method: str = Form("ssim", description="ssim (pixel-wise) or cyws (learned)."),
        model: Optional[str] = Form(None, description="cyws: a model id from GET /v1/models "
                                                      "(default: the first)."),
        top_k: Optional[str] = Form(None, description="Keep at most N boxes per image."),
        min_score: Optional[str] = Form(None, description="Drop boxes scoring below S."),
        align: Optional[str] = Form(None, description="ssim: auto, homography or none."),
        ignore_mask: Optional[UploadFile] = File(None, description="Mask the size of A; white = ignore."),
        include: Optional[str] = Form(None, description="Extras, comma-separated: shown, maps."),
    ) -> JSONResponse:
        busy = _error(503, f"server busy: {limits.workers} detections running and {limits.queue} "
                           "waiting; retry in a few seconds", headers={"Retry-After": "5"})
        if service.pool.full():  # before the uploads are read into memory (starlette spooled them to disk)
            return busy

        async def upload(field: str, f: UploadFile) -> Upload:
            # read at most one byte over the cap: the size check then refuses it
            return Upload(field, f.filename, await f.read(limits.max_upload_bytes + 1))

        form = DetectForm(await upload("image_a", image_a), await upload("image_b", image_b),
                          method=method, model=model or None, top_k=top_k or None,
                          min_score=min_score or None, align=align or None,
                          ignore_mask=(await upload("ignore_mask", ignore_mask)
                                       if ignore_mask is not None and ignore_mask.filename else None),
                          include=include)
        try:
            report = await service.pool.run(lambda: service.detect(form), limits.timeout_s)
        except UploadError as exc:
            return _error(exc.status, str(exc))
        except SpotdiffError as exc:
            return _error(400, str(exc))
        except Busy:
            return busy
        except asyncio.TimeoutError:
            return _error(504, f"detection took longer than the server's {limits.timeout_s:g} s limit; "
                               "send smaller images or retry later")
        return JSONResponse(report)

    return app
