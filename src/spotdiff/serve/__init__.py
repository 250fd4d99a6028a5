"""`spotdiff serve`: the detector behind a web page and an HTTP API (FastAPI + uvicorn).

- `uploads`: turning uploaded bytes into images — size cap, content sniffing, the image loader's
  pixel cap, one-line errors naming the form field;
- `service`: the models that can be chosen (loaded once, shared), the bounded worker pool and the
  request timeout, and one detection → the same report as `spotdiff detect --json`;
- `app`: the FastAPI app — the page (`static/`, served by the app itself: no CDN), `POST /v1/detect`,
  `GET /v1/models`, `GET /healthz`, OpenAPI docs at `/docs`.
"""
