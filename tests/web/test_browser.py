"""The page in a real browser: Chromium (the system's, headless, software WebGL2) driven by Playwright.

It types a prompt, waits for the job, and checks what a user would see: the viewer's canvas shows
the label colours from /api/labels, a class toggled off disappears, the CT downloads, and without
WebGL2 the page falls back to server-rendered slices. Every request must succeed (a CDN reference
would fail here: the machine is offline to the page) and the page must raise no error.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM = next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (Debian: apt-get install chromium)"),
]
PROMPT = "enlarged spleen, 3 cm tumour in the right lobe of the liver, portal venous phase"


def _pixels(png: bytes) -> np.ndarray:
    from matplotlib.image import imread

    return (imread(io.BytesIO(png), format="png")[..., :3] * 255).round().astype(np.int16)


def _colour_counts(png: bytes, classes: list[dict], tolerance: int = 6) -> dict[str, int]:
    pixels = _pixels(png)
    return {
        c["name"]: int(np.count_nonzero(np.all(np.abs(pixels - np.array(c["colour"])) <= tolerance, axis=-1)))
        for c in classes
    }


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--ignore-gpu-blocklist"],
        )
        yield browser
        browser.close()


def _watched_page(browser, problems: list[str]):
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda m: problems.append(f"console error: {m.text}") if m.type == "error" else None)
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    return page


def test_prompt_to_viewer_legend_toggle_download_and_the_slice_fallback(browser, live, tmp_path):
    problems: list[str] = []
    page = _watched_page(browser, problems)
    page.goto(live.url + "/")
    page.wait_for_selector("body[data-ready=yes]", state="attached", timeout=30_000)
    assert page.evaluate("document.body.dataset.mode") == "webgl2", "Chromium's software WebGL2 is missing"
    classes = [c for c in json.loads(page.evaluate("JSON.stringify(window.guidegen.labels)"))]
    legend = page.eval_on_selector_all("#legend input", "boxes => boxes.map(b => b.dataset.label)")
    assert legend == [c["name"] for c in classes]  # the legend is /api/labels, in its order

    page.fill("#prompt", PROMPT)
    page.wait_for_selector("#parsed .chip", timeout=15_000)
    chips = page.inner_text("#parsed")
    assert "spleen: enlarged" in chips and "liver" in chips and "portal venous" in chips, chips
    page.fill("#steps", "1")  # the fewest network steps: the page is under test, not the model
    page.fill("#image_steps", "1")
    page.click("#generate")
    # Generous: a busy CI machine may take minutes to start the worker process (it imports torch).
    page.wait_for_selector("body[data-viewer=loaded]", state="attached", timeout=900_000)
    assert page.evaluate("window.guidegen.views.A.nv.volumes.length") == 2  # CT and labels loaded
    job = page.evaluate("window.guidegen.views.A.job")
    assert job["state"] == "done" and job["params"]["prompt"] == PROMPT

    # Labels fully opaque, so that their colours are exact on the canvas.
    page.eval_on_selector("#opacity", "s => { s.value = 1; s.dispatchEvent(new Event('input')); }")
    page.wait_for_timeout(500)
    shown = _colour_counts(page.locator("#viewA canvas").screenshot(), classes)
    present = set(live.client.get(f"/api/jobs/{job['id']}/files/case.json").json()["labels"].values())
    visible = {name: n for name, n in shown.items() if name in present and name != "body"}
    target = max(visible, key=visible.get)
    assert visible[target] > 200, f"no label colour on the canvas: {shown}"

    page.uncheck(f"#legend input[data-label={target}]")
    page.wait_for_timeout(500)
    after = _colour_counts(page.locator("#viewA canvas").screenshot(), classes)
    assert after[target] < 0.05 * visible[target], (target, visible[target], after[target])
    others = [n for n in visible if n != target and visible[n] > 200]
    for name in others:  # the other classes stay
        assert after[name] > 0.5 * visible[name], (name, visible[name], after[name])

    with page.expect_download() as download:
        page.click("#viewA .files a:text('ct.nii.gz')")
    saved = tmp_path / "ct.nii.gz"
    download.value.save_as(saved)
    served = live.out / "jobs" / job["id"] / "result" / "case_000000" / "ct.nii.gz"
    assert gzip.decompress(saved.read_bytes()) == gzip.decompress(served.read_bytes())

    # Without WebGL2: the same case as three server-rendered planes, label colours in them.
    fallback = _watched_page(browser, problems)
    fallback.goto(live.url + "/?nowebgl=1")
    fallback.wait_for_selector("body[data-mode=slices]", state="attached", timeout=30_000)
    fallback.click(f"#gallery li[data-job='{job['id']}'] button")
    fallback.wait_for_function(
        "[...document.querySelectorAll('#viewA .fallback img')].every(i => i.complete && i.naturalWidth > 0)",
        timeout=30_000,
    )
    src = fallback.get_attribute("#viewA .fallback img[data-axis=coronal]", "src")
    url = urllib.parse.urlsplit(src)
    query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
    body = next(c["id"] for c in classes if c["name"] == "body")
    assert query["case"] == "0" and query["window"] == "abdomen" and query["hidden"] == str(body)  # hidden at first
    opaque = {**query, "opacity": "1", "axis": "axial"}
    slices = _colour_counts(live.client.get(url.path, params=opaque).content, classes, tolerance=1)
    target_id = next(c["id"] for c in classes if c["name"] == target)
    assert slices[target] > 0, slices
    without = live.client.get(url.path, params={**opaque, "hidden": f"{body},{target_id}"}).content
    assert _colour_counts(without, classes, tolerance=1)[target] == 0
    assert not problems, "\n".join(problems)
    page.close()
    fallback.close()


def test_no_external_urls_in_the_page_or_the_vendored_viewer():
    static = Path(__file__).resolve().parents[2] / "src" / "guidegen" / "web" / "static"
    for name in ("index.html", "app.js"):
        text = (static / name).read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text, name
    assert (static / "vendor" / "LICENSE-niivue.txt").is_file()
