"""`spotdiff serve`'s HTTP API through FastAPI's test client: the report is `spotdiff detect --json`'s,
bad uploads and options are refused with a 4xx and one line, the pool bounds concurrent work."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from helpers.images import PASTE, astronaut_pair, iou, png_header_only
from helpers.serve import png_bytes

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pair_png() -> tuple[bytes, bytes]:
    a, b = astronaut_pair()
    return png_bytes(a), png_bytes(b)


def make_client(models=(), **limits):
    from fastapi.testclient import TestClient

    from spotdiff.params import Params
    from spotdiff.serve.app import create_app
    from spotdiff.serve.service import Limits, Service

    return TestClient(create_app(Service(Params().ssim, list(models), Limits(**limits))),
                      raise_server_exceptions=False)  # a 500 is answered, as uvicorn would


@pytest.fixture(scope="module")
def client():
    with make_client() as c:
        yield c


@pytest.fixture(scope="module")
def cyws_client(tiny_model_file):
    from spotdiff.serve.service import load_models

    with make_client(load_models([str(tiny_model_file)], engine="eager")) as c:
        yield c


def post(c, a: bytes, b: bytes, name_a="a.png", name_b="b.png", **data):
    return c.post("/v1/detect", files={"image_a": (name_a, a), "image_b": (name_b, b)}, data=data)


def assert_one_line_error(r, status: int, *needles: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    msg = body["error"]
    assert "\n" not in msg and "Traceback" not in msg and msg.strip() == msg
    for n in needles:
        assert n in msg, msg
    return msg


# ---------------------------------------------------------------- a good pair


def test_good_pair_gives_the_cli_report(client, pair_png, tmp_path):
    """The API's JSON is `spotdiff detect --json`'s (same keys, same boxes) for the same two files."""
    from spotdiff.detect import detect_pair
    from spotdiff.params import Params

    r = post(client, *pair_png, name_a="astro.png", name_b="astro_cat.png")
    assert r.status_code == 200, r.text
    got = r.json()
    (tmp_path / "astro.png").write_bytes(pair_png[0])
    (tmp_path / "astro_cat.png").write_bytes(pair_png[1])
    want = detect_pair(tmp_path / "astro.png", tmp_path / "astro_cat.png", params=Params())
    assert set(got) == set(want)
    for g, w in zip(got["images"], want["images"]):
        assert {k: v for k, v in g.items() if k != "path"} == {k: v for k, v in w.items() if k != "path"}
    assert [im["path"] for im in got["images"]] == ["astro.png", "astro_cat.png"]
    assert got["num_changes"] == want["num_changes"] >= 1
    assert iou(got["images"][0]["boxes"][0], PASTE) > 0.5
    assert got["settings"] == want["settings"] and got["method"] == "ssim" and got["model"] is None


def test_page_extras_shown_boxes_and_difference_map(client, pair_png):
    r = post(client, *pair_png, include="shown,maps", top_k="3")
    assert r.status_code == 200, r.text
    rep = r.json()
    shown = rep["shown"]["images"]
    assert len(shown[0]["boxes"]) == len(rep["images"][0]["boxes"]) <= 3  # ssim shows what it reports
    (m,) = rep["maps"]
    assert m["kind"] == "picture" and m["image"] == "a" and m["png"].startswith("data:image/png;base64,")
    import base64
    import io

    from PIL import Image

    pic = Image.open(io.BytesIO(base64.b64decode(m["png"].split(",", 1)[1])))
    assert pic.size == (512, 512)


def test_content_decides_not_the_name(client, pair_png):
    """A PNG uploaded as photo.txt is decoded; text uploaded as a.png is refused (415)."""
    r = post(client, *pair_png, name_a="photo.txt", name_b="x.jpeg")
    assert r.status_code == 200, r.text
    assert_one_line_error(post(client, b"GIF-ish? no, just text " * 10, pair_png[1]), 415, "image_a (a.png)",
                          "judged by its content")
    assert_one_line_error(post(client, pair_png[0], b"<svg xmlns='http://www.w3.org/2000/svg'/>",
                               name_b="b.svg"), 415, "image_b (b.svg)")


def test_bad_files_one_line_4xx(client, pair_png, tmp_path):
    assert_one_line_error(post(client, b"", pair_png[1]), 400, "image_a", "empty")
    assert_one_line_error(post(client, pair_png[0][:300], pair_png[1]), 422, "image_a (a.png)",
                          "corrupt or truncated")
    bomb = png_header_only(tmp_path / "bomb.png", 60_000, 60_000).read_bytes()
    assert_one_line_error(post(client, pair_png[0], bomb, name_b="bomb.png"), 413, "image_b (bomb.png)",
                          "too large")
    # the temporary file's path never leaks into a message
    msg = assert_one_line_error(post(client, pair_png[0][:300], pair_png[1]), 422)
    assert "spotdiff-upload-" not in msg and "/tmp" not in msg


def test_caps_upload_bytes_and_pixels(pair_png):
    with make_client(max_upload_bytes=200_000) as c:
        assert_one_line_error(post(c, pair_png[0], pair_png[1]), 413, "image_a", "upload cap of 200,000")
        # a body far over the cap is refused from Content-Length, before the form is read
        big = b"\x89PNG\r\n\x1a\n" + bytes(2_000_000)
        assert_one_line_error(post(c, big, big), 413, "request body")
    with make_client(max_pixels=100_000) as c:
        assert_one_line_error(post(c, pair_png[0], pair_png[1]), 413, "image_a (a.png): too large", "100,000")


def test_wrong_types_and_options(client, pair_png):
    assert_one_line_error(post(client, *pair_png, method="magic"), 400, "unknown method 'magic'", "ssim, cyws")
    assert_one_line_error(post(client, *pair_png, top_k="many"), 400, "--top-k")
    assert_one_line_error(post(client, *pair_png, min_score="-1"), 400, "--min-score")
    assert_one_line_error(post(client, *pair_png, align="sideways"), 400, "align", "homography")
    assert_one_line_error(post(client, *pair_png, model="models:/x@champion"), 400, "only used with method cyws")
    assert_one_line_error(post(client, *pair_png, include="everything"), 400, "include", "shown, maps")
    assert_one_line_error(post(client, *pair_png, method="cyws"), 400, "no learned model")
    r = client.post("/v1/detect", files={"image_b": ("b.png", pair_png[1])})
    assert_one_line_error(r, 422, "image_a", "multipart")
    r = client.post("/v1/detect", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "\n" not in r.json()["error"]


def test_ignore_mask_upload(client, pair_png):
    """White over the pasted patch: the change is no longer reported; a mask of the wrong size: 422."""
    mask = np.zeros((512, 512, 3), np.uint8)
    x1, y1, x2, y2 = PASTE
    mask[y1 - 20:y2 + 20, x1 - 20:x2 + 20] = 255
    files = {"image_a": ("a.png", pair_png[0]), "image_b": ("b.png", pair_png[1]),
             "ignore_mask": ("m.png", png_bytes(mask))}
    r = client.post("/v1/detect", files=files)
    assert r.status_code == 200, r.text
    assert all(iou(b, PASTE) < 0.3 for b in r.json()["images"][0]["boxes"])
    files["ignore_mask"] = ("m.png", png_bytes(mask[:100]))
    assert_one_line_error(client.post("/v1/detect", files=files), 422, "ignore_mask (m.png)", "same size")


def test_unexpected_failure_is_a_500_without_trace(pair_png, monkeypatch):
    with make_client() as c:
        service = c.app.state.service

        def boom(form):
            raise RuntimeError("secret internals /srv/x.py line 3")

        monkeypatch.setattr(service, "detect", boom)
        msg = assert_one_line_error(post(c, *pair_png), 500, "internal error")
        assert "secret" not in msg


# ---------------------------------------------------------------- the learned model


def test_cyws_models_listed_and_used(cyws_client, pair_png, tiny_model_file):
    models = cyws_client.get("/v1/models").json()
    assert [m["id"] for m in models["models"]] == ["cyws.pt"]  # by file name: no server path is shown
    assert models["default_model"] == "cyws.pt" and models["models"][0]["available"]
    r = post(cyws_client, *pair_png, method="cyws", model="cyws.pt", include="shown,maps")
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["model"] == "cyws.pt" and rep["method"] == "cyws"
    assert str(tiny_model_file.parent) not in r.text + json.dumps(models)
    assert rep["shown"]["rule"] == "after NMS" and len(rep["shown"]["images"][0]["boxes"]) <= 5
    (att,) = rep["maps"]
    h, w = att["grid"]
    grid = np.asarray(att["a_to_b"])
    assert att["kind"] == "attention" and grid.shape == (h * w, h * w)
    np.testing.assert_allclose(grid.sum(axis=1), 1.0, atol=1e-3)  # each A cell's map over B sums to 1
    assert_one_line_error(post(cyws_client, *pair_png, method="cyws", model="models:/other@champion"), 400,
                          "not served here", "cyws.pt")
    assert_one_line_error(post(cyws_client, *pair_png, method="cyws", align="none"), 400, "only used with method ssim")


def test_bad_model_reference_stops_the_server_from_starting(tmp_path):
    from spotdiff.errors import SpotdiffError
    from spotdiff.serve.service import load_models

    with pytest.raises(SpotdiffError, match="missing.pt"):
        load_models([str(tmp_path / "missing.pt")], engine="eager")


# ---------------------------------------------------------------- the pool: queue, busy, timeout


def test_concurrent_requests_queue_and_agree(pair_png):
    """12 requests at once on 2 workers: every one answered 200 with the same boxes; never more than
    2 detections ran at the same time."""
    with make_client(workers=2, queue=16) as c:
        service = c.app.state.service
        running, peak, lock = 0, 0, threading.Lock()
        real = service.detect

        def counted(form):
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            try:
                return real(form)
            finally:
                with lock:
                    running -= 1

        service.detect = counted
        with ThreadPoolExecutor(12) as ex:
            results = list(ex.map(lambda _: post(c, *pair_png), range(12)))
        assert [r.status_code for r in results] == [200] * 12
        boxes = {json.dumps(r.json()["images"]) for r in results}
        assert len(boxes) == 1
        assert peak <= 2
        assert c.get("/healthz").json()["pending"] == 0


def test_full_queue_503_and_timeout_504(pair_png):
    with make_client(workers=1, queue=0, timeout_s=0.5) as c:
        pool = c.app.state.service.pool
        release = threading.Event()
        blocker = pool.submit(lambda: release.wait(30))
        try:
            msg = assert_one_line_error(post(c, *pair_png), 503, "server busy", "retry")
            assert "1 detections running" in msg
        finally:
            release.set()
            blocker.result(timeout=30)
    with make_client(workers=1, queue=1, timeout_s=0.5) as c:
        pool = c.app.state.service.pool
        release = threading.Event()
        blocker = pool.submit(lambda: release.wait(30))
        try:
            t0 = time.monotonic()
            assert_one_line_error(post(c, *pair_png), 504, "longer than the server's 0.5 s limit")
            assert time.monotonic() - t0 < 10
        finally:
            release.set()
            blocker.result(timeout=30)
        assert post(c, *pair_png).status_code == 200  # the pool recovers


def test_page_docs_and_health_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for path in ("/static/app.js", "/static/style.css"):
        assert client.get(path).status_code == 200
    docs = client.get("/docs").text
    assert "/static-offline-docs/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/v1/detect", "/v1/models", "/healthz"} <= set(spec["paths"])
    assert "http://" not in page.text and "https://" not in page.text  # no external resource
    assert client.get("/healthz").json()["status"] == "ok"


def test_chunked_body_over_the_cap_is_cut_off(pair_png):
    """No Content-Length (a chunked upload): the body is counted as it streams in and refused at the cap
    with a 413 and one line, not FastAPI's "error parsing the body" 400."""

    def body():
        for _ in range(50):
            yield b"x" * 100_000

    with make_client(max_upload_bytes=200_000) as c:
        r = c.post("/v1/detect", content=body(), headers={"content-type": "multipart/form-data; boundary=zz"})
        assert "content-length" not in {k.lower() for k in r.request.headers}
        assert_one_line_error(r, 413, "request body", "more than 1,648,576 bytes")
        assert_one_line_error(c.get("/nowhere"), 404, "Not Found")


def test_default_model_is_the_champion_or_default_file(monkeypatch, tiny_model_file, tmp_path, pair_png):
    """No --model: the registry champion / models/cyws.pt (`detect.default_model_ref`) is offered; when it
    cannot be loaded the server still starts, lists why, and ssim works."""
    import spotdiff.serve.service as service

    monkeypatch.setattr(service, "default_model_ref", lambda: str(tiny_model_file))
    (choice,) = service.load_models([], engine="eager")
    assert choice.detector is not None and choice.kind == "checkpoint"
    broken = tmp_path / "cyws.pt"
    broken.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(service, "default_model_ref", lambda: str(broken))
    (choice,) = service.load_models([], engine="eager")
    assert choice.detector is None and "cyws.pt" in choice.error
    with make_client([choice]) as c:
        listed = c.get("/v1/models").json()
        assert listed["default_model"] is None and listed["models"][0]["available"] is False
        assert post(c, *pair_png).status_code == 200
        assert_one_line_error(post(c, *pair_png, method="cyws"), 400, "no learned model")
    monkeypatch.setattr(service, "default_model_ref", lambda: None)
    assert service.load_models([]) == []


def test_model_ids_are_file_names_made_unique(tiny_model_file, tmp_path):
    import shutil

    from spotdiff.serve.service import load_models

    other = tmp_path / "elsewhere" / "cyws.pt"
    other.parent.mkdir()
    shutil.copy(tiny_model_file, other)
    ids = [m.id for m in load_models([str(tiny_model_file), str(other), str(tiny_model_file)], engine="eager")]
    assert ids == ["cyws.pt", "cyws.pt-2"]  # the same file twice is offered once


@pytest.mark.parametrize("fmt, name", [("JPEG", "a.jpg"), ("WEBP", "a.webp"), ("TIFF", "a.tif"),
                                       ("BMP", "a.bmp"), ("GIF", "a.gif")])
def test_every_sniffed_format_is_decoded(client, fmt, name):
    """Each format the content check lets through is one the loader reads: same size back, a change found."""
    import io

    from PIL import Image

    from spotdiff.serve.uploads import sniff

    a, b = astronaut_pair()
    data = []
    for img in (a[::2, ::2], b[::2, ::2]):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(img)).save(buf, format=fmt)
        data.append(buf.getvalue())
    assert sniff(data[0]) == fmt.lower()
    r = post(client, data[0], data[1], name_a=name, name_b=name)
    assert r.status_code == 200, r.text
    rep = r.json()
    assert (rep["images"][0]["width"], rep["images"][0]["height"]) == (256, 256) and rep["num_changes"] >= 1


def test_a_text_field_where_a_file_belongs(client, pair_png):
    r = client.post("/v1/detect", data={"image_a": "hello"}, files={"image_b": ("b.png", pair_png[1])})
    assert_one_line_error(r, 422, "image_a", "multipart")


def test_a_slow_upload_is_cut_off_with_504():
    """A client that sends its body too slowly holds no connection past the limit: 504, one line."""
    import asyncio

    from spotdiff.serve.app import BodyLimit

    async def app(scope, receive, send):  # reads the whole body, as form parsing does
        while (await receive()).get("more_body", False):
            pass
        raise AssertionError("the body never ends")

    async def slow_receive():
        await asyncio.sleep(0.2)
        return {"type": "http.request", "body": b"x", "more_body": True}

    sent = []

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "method": "POST", "path": "/v1/detect", "headers": []}
    t0 = time.monotonic()
    asyncio.run(BodyLimit(app, max_bytes=10**9, timeout_s=1.0)(scope, slow_receive, send))
    assert 0.9 < time.monotonic() - t0 < 5
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 504
    body = json.loads(sent[1]["body"])
    assert "not answered within the server's 1 s limit" in body["error"]
