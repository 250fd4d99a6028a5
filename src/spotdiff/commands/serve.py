"""`spotdiff serve`: the page (drop two images, see the changes boxed) and the HTTP API, on uvicorn.

The models are loaded before the server listens (a bad --model is a one-line error and exit 2); the
limits (upload size, pixels, workers, queue, timeout) are those of `spotdiff.serve.service.Limits`.
"""

from __future__ import annotations

from typing import Optional

import typer


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on."),
    model: Optional[list[str]] = typer.Option(
        None, "--model", metavar="REF",
        help="cyws model(s) to offer, repeatable: a checkpoint (ours or the authors' published .ckpt) or "
             "models:/NAME@ALIAS; default: the registry champion, else models/cyws.pt, if any."),
    engine: str = typer.Option("auto", "--engine", metavar="NAME",
                               help="cyws forward: auto, eager, onnxruntime, ... (see spotdiff detect)."),
    workers: int = typer.Option(2, "--workers", min=1, max=64,
                                help="Detections computed at the same time (the rest queue)."),
    queue: int = typer.Option(32, "--queue", min=0, max=10_000,
                              help="Requests allowed to wait for a worker; beyond that: 503."),
    timeout: float = typer.Option(120.0, "--timeout", min=1.0, help="Seconds a request may wait and run (504)."),
    max_upload_mb: float = typer.Option(32.0, "--max-upload-mb", min=0.01, help="Largest upload per image, MB."),
    max_pixels: int = typer.Option(50_000_000, "--max-pixels", min=1,
                                   help="Largest image, in pixels (checked before decoding)."),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, help="torch threads per worker (default: CPU cores / workers)."),
    params_file: Optional[str] = typer.Option(
        None, "--params", metavar="FILE", help="params.yaml for ssim's settings (default ./params.yaml)."),
) -> int:
    """Serve the page and the API: drop two images on http://HOST:PORT/, or POST /v1/detect."""
    import logging
    import os
    import warnings
    from pathlib import Path

    from spotdiff.errors import SpotdiffError
    from spotdiff.imageio import MAX_PIXELS

    if max_pixels > MAX_PIXELS:  # checked before the heavy imports: a typo answers at once
        raise SpotdiffError(f"--max-pixels: {max_pixels:,} is above the image loader's cap of {MAX_PIXELS:,}; "
                            "pass a smaller number")
    if params_file is not None and not Path(params_file).is_file():
        raise SpotdiffError(f"{params_file}: params file not found; check --params")

    import torch
    import uvicorn

    from spotdiff.detect import resolve_params
    from spotdiff.methods.engines import ENGINES
    from spotdiff.serve.app import create_app
    from spotdiff.serve.service import Limits, Service, load_models

    if engine not in ENGINES:
        raise SpotdiffError(f"--engine: unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // workers))
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # registration fallbacks: in diagnostics
    ssim = resolve_params(params_file)
    limits = Limits(max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_pixels,
                    workers=workers, queue=queue, timeout_s=timeout)
    models = load_models(list(model or []), engine=engine)
    for m in models:
        state = f"loaded ({m.detector.summary()})" if m.detector else f"not loaded: {m.error}"
        typer.echo(f"model {m.id}: {state}", err=True)
    app = create_app(Service(ssim, models, limits))
    typer.echo(f"spotdiff serve: http://{host}:{port}/  (API docs at /docs)", err=True)
    logging.getLogger("spotdiff.serve").setLevel(logging.INFO)
    # a hard ceiling on open requests (uvicorn answers 503 beyond it, before reading a byte); the pool's
    # own 503 (one JSON line) comes first, the spare connections are for /healthz and the page
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5,
                limit_concurrency=workers + queue + 32)
    return 0


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
