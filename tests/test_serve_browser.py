"""The page in a real browser: headless Debian chromium driven by Selenium (the system chromedriver)
against `spotdiff serve` started on 127.0.0.1 — upload two images, wait for the boxes, count them
against the JSON, move the slider, hover a change, show the maps, take screenshots.

Chromium comes from the project's set-up (`make browser`, run by `make test`); without it the test
skips and says so. Screenshots go to the test's tmp folder, and also to $SPOTDIFF_SCREENSHOTS when
set (how docs/serve_page.png is made)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.images import astronaut_pair, iou
from helpers.serve import running_server

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars")


@pytest.fixture
def browser(tmp_path):
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_bin):
        pytest.skip("chromium/chromedriver not installed: `make browser` installs Debian's packages "
                    "(needs root and apt-get)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="spotdiff-chromium-", dir=tmp_path)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--window-size=1280,1000")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(driver_bin), options=options)
    driver.set_page_load_timeout(60)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


# Two PNGs made in the page (grey, and grey with a red block at x 30-70, y 20-50), as a clipboard
# paste and as a drop of two files would hand them over.
_MAKE_PNG = """
async function png(red) {
  const c = document.createElement('canvas'); c.width = 120; c.height = 90;
  const x = c.getContext('2d'); x.fillStyle = '#808080'; x.fillRect(0, 0, 120, 90);
  if (red) { x.fillStyle = '#ff0000'; x.fillRect(30, 20, 40, 30); }
  return await new Promise((r) => c.toBlob(r, 'image/png'));
}
"""
PASTE_TWO = _MAKE_PNG + """
const done = arguments[arguments.length - 1];
(async () => {
  for (const red of [false, true]) {
    const dt = new DataTransfer();
    dt.items.add(new File([await png(red)], 'clip.png', {type: 'image/png'}));
    document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt}));
  }
  done(true);
})();
"""
DROP_TWO = _MAKE_PNG + """
const done = arguments[arguments.length - 1];
(async () => {
  const dt = new DataTransfer();
  dt.items.add(new File([await png(true)], 'dropped-1.png', {type: 'image/png'}));
  dt.items.add(new File([await png(false)], 'dropped-2.png', {type: 'image/png'}));
  document.getElementById('drop-a').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true,
                                                                         cancelable: true}));
  done(true);
})();
"""


def _downloaded(driver, name: str, timeout: float = 30) -> Path:
    path = driver.downloads / name
    deadline = time.monotonic() + timeout
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert path.is_file(), sorted(p.name for p in driver.downloads.iterdir())
    return path


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    if os.environ.get("SPOTDIFF_SCREENSHOTS"):
        out = Path(os.environ["SPOTDIFF_SCREENSHOTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / name)
    return path


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    """The astronaut with the cat pasted in, and a second change: a patch mirrored left-right."""
    from PIL import Image

    a, b = astronaut_pair()
    b[40:110, 30:130] = b[40:110, 30:130][:, ::-1]
    pa, pb = tmp_path / "astronaut.png", tmp_path / "astronaut_changed.png"
    Image.fromarray(a).save(pa)
    Image.fromarray(b).save(pb)
    return pa, pb


def _expect_request(driver) -> None:
    """Mark the page before an action that makes it ask the server, so `_wait_done` waits for that answer
    (the page sends on the next tick, and the last answer's "done" is still on the body until then)."""
    driver.execute_script("document.body.dataset.state = 'waiting';")


def _wait_done(driver, timeout: float = 120) -> dict:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element("tag name", "body").get_attribute("data-state") in ("done", "error"))
    state = driver.find_element("tag name", "body").get_attribute("data-state")
    assert state == "done", driver.find_element("id", "status").text
    return driver.execute_script("return report;")


def _drawn(driver, slot: str) -> list:
    return driver.find_elements("css selector", f"#boxes-{slot} g.box:not(.hidden)")


@pytest.mark.slow  # ~45 s on 2 busy cores: chromium, a server, two methods, five screenshots
def test_page_upload_boxes_slider_overlay_screenshots(browser, tmp_path, tiny_model_file):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    from spotdiff.render import PALETTE

    pa, pb = _pair(tmp_path)
    args = ["--workers", "1", "--threads", "1", "--model", str(tiny_model_file), "--engine", "eager"]
    with running_server(args, tmp_path) as server:
        d = browser
        d.get(server.url + "/")
        assert d.title.startswith("spotdiff")
        d.find_element("id", "file-a").send_keys(str(pa))
        d.find_element("id", "file-b").send_keys(str(pb))  # both chosen: the page sends the request
        report = _wait_done(d)

        # as many boxes drawn as the JSON's shown boxes, in both images, numbered alike
        shown = report["shown"]["images"]
        assert report["method"] == "ssim" and len(shown[0]["boxes"]) >= 2
        for slot, im in zip("ab", shown):
            drawn = _drawn(d, slot)
            assert len(drawn) == len(im["boxes"])
            assert sorted(int(g.get_attribute("data-label")) for g in drawn) == sorted(im["labels"])
        assert d.find_element("id", "count").get_attribute("data-a") == str(len(shown[0]["boxes"]))
        _screenshot(d, tmp_path, "serve_page.png")

        # downloads: the JSON is the answer; the PNG is image A with the shown boxes in their colours
        d.find_element("id", "dl-json").click()
        d.find_element("id", "dl-a").click()
        saved_json = _downloaded(d, "astronaut_vs_astronaut_changed.json")
        assert json.loads(saved_json.read_text())["images"] == report["images"]
        png = np.asarray(Image.open(_downloaded(d, "astronaut.boxes.png")).convert("RGB"))
        assert png.shape == (512, 512, 3)
        for (x1, y1, x2, _), label in zip(shown[0]["boxes"], shown[0]["labels"]):
            edge = png[int(y1), int((x1 + x2) / 2)]  # the middle of the box's top edge
            assert np.abs(edge.astype(int) - PALETTE[(label - 1) % len(PALETTE)]).max() <= 8, (label, edge)

        # hovering box #1 in A highlights #1 in B
        ActionChains(d).move_to_element(_drawn(d, "a")[0]).perform()
        label = _drawn(d, "a")[0].get_attribute("data-label")
        hot_b = d.find_elements("css selector", "#boxes-b g.box.hot")
        assert [g.get_attribute("data-label") for g in hot_b] == [label]

        # the slider re-filters without a request: to the top score leaves the best box(es) only
        served = server.get_json("/healthz")["served"]
        slider = d.find_element("id", "min-score")
        slider.send_keys(Keys.END)
        assert float(slider.get_attribute("value")) == pytest.approx(max(shown[0]["scores"]))
        want = sum(s >= max(shown[0]["scores"]) for s in shown[0]["scores"])
        assert len(_drawn(d, "a")) == want < len(shown[0]["scores"])
        slider.send_keys(Keys.HOME)
        assert len(_drawn(d, "a")) == len(shown[0]["boxes"])
        assert server.get_json("/healthz")["served"] == served  # no new request

        # the difference map over A
        d.find_element("id", "overlay").click()
        heat = d.find_element("id", "heat-a")
        assert heat.is_displayed()
        _screenshot(d, tmp_path, "serve_page_difference.png")

        # the learned model: pick cyws, the page asks again; click in A → co-attention over B
        _expect_request(d)
        Select(d.find_element("id", "method")).select_by_value("cyws")
        report = _wait_done(d)
        assert report["method"] == "cyws" and report["model"] == "cyws.pt"
        for slot, im in zip("ab", report["shown"]["images"]):
            assert len(_drawn(d, slot)) == len(im["boxes"])
        d.find_element("id", "overlay").click()
        stage = d.find_element("css selector", "#pane-a .stage")
        ActionChains(d).move_to_element_with_offset(stage, 10, 10).click().perform()
        assert d.find_element("id", "heat-b").is_displayed()
        assert "cell" in d.find_element("id", "overlay-caption").text
        _screenshot(d, tmp_path, "serve_page_cyws.png")

        # a phone-sized screen: the panes stack, both images still fully visible in width
        d.set_window_size(390, 844)
        _expect_request(d)
        Select(d.find_element("id", "method")).select_by_value("ssim")
        _wait_done(d)
        a_box, b_box = (d.find_element("id", f"pane-{s}").rect for s in "ab")
        assert b_box["y"] >= a_box["y"] + a_box["height"] - 1  # stacked
        assert a_box["width"] <= 390
        _screenshot(d, tmp_path, "serve_page_phone.png")

        # paste from the clipboard (A, then B), then drop two files on A: each time the page asks again
        d.set_window_size(1280, 1000)
        d.get(server.url + "/")
        _expect_request(d)
        d.execute_async_script(PASTE_TWO)
        report = _wait_done(d)
        assert [im["path"] for im in report["images"]] == ["pasted-a.png", "pasted-b.png"]
        assert iou(report["images"][0]["boxes"][0], (30, 20, 70, 50)) > 0.5
        _expect_request(d)
        d.execute_async_script(DROP_TWO)
        report = _wait_done(d)
        assert [im["path"] for im in report["images"]] == ["dropped-1.png", "dropped-2.png"]
        assert server.get_json("/healthz")["served"] == served + 4  # cyws, ssim (phone), paste, drop: one request each

        # a refused upload shows the server's one line
        bad = tmp_path / "notes.png"
        bad.write_text("not an image")
        d.find_element("id", "file-b").send_keys(str(bad))
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(d, 60).until(lambda x: x.find_element("tag name", "body").get_attribute("data-state") == "error")
        assert "image_b (notes.png): not a PNG" in d.find_element("id", "status").text
    for name in ("serve_page.png", "serve_page_difference.png", "serve_page_cyws.png", "serve_page_phone.png"):
        assert (tmp_path / name).stat().st_size > 10_000
