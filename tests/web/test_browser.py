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
import time
import urllib.parse
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_erosion

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
    page.fill("#n", "2")  # two cases, to compare them side by side
    with page.expect_response(lambda r: r.url.endswith("/api/jobs") and r.request.method == "POST") as sent:
        page.click("#generate")
    assert sent.value.ok, sent.value.text()
    _wait_for_viewer(page, live.client, sent.value.json()["id"], problems)
    assert page.evaluate("window.guidegen.views.A.nv.volumes.length") == 2  # CT and labels loaded
    job = page.evaluate("window.guidegen.views.A.job")
    assert job["state"] == "done" and job["params"]["prompt"] == PROMPT and job["cases"] == [0, 1]

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

    page.check(f"#legend input[data-label={target}]")
    _check_the_cursor(page, live, job, classes, target)

    # Compare: the second case opens beside the first, with its own labels; unchecking goes back to one.
    page.check("#compare")
    page.click(f"#gallery li[data-job='{job['id']}'] button:text('case 1')")
    page.wait_for_function("window.guidegen.views.B && window.guidegen.views.B.nv.volumes.length === 2")
    assert page.evaluate("[window.guidegen.views.A.index, window.guidegen.views.B.index]") == [0, 1]
    assert "seed 1" in page.inner_text("#viewB .title") and "seed 0" in page.inner_text("#viewA .title")
    page.wait_for_timeout(500)
    second = _colour_counts(page.locator("#viewB canvas").screenshot(), classes)
    present = set(live.client.get(f"/api/jobs/{job['id']}/files/case.json?case=1").json()["labels"].values())
    assert max(n for name, n in second.items() if name in present and name != "body") > 200, second
    page.uncheck("#compare")
    assert page.is_hidden("#viewB") and page.evaluate("window.guidegen.views.B") is None

    # Without WebGL2: the same case as three server-rendered planes, label colours in them.
    fallback = _watched_page(browser, problems)
    fallback.goto(live.url + "/?nowebgl=1")
    fallback.wait_for_selector("body[data-mode=slices]", state="attached", timeout=30_000)
    fallback.click(f"#gallery li[data-job='{job['id']}'] button:text('case 0')")
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


def _wait_for_viewer(page, client, job_id: str, problems: list[str], timeout: float = 900.0) -> None:
    """Wait for the page to show the job's first case, failing at once when the job fails.

    Generous overall: a busy CI machine may take minutes to start the worker (it imports torch).
    """
    deadline = time.monotonic() + timeout
    shown_by = None  # once the job is done, the page has a minute to show it
    while page.evaluate("document.body.dataset.viewer") != "loaded":
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("failed", "cancelled"):
            pytest.fail(f"the job {job['state']}: {job['error']} (the page says: {page.inner_text('#error')!r})")
        if job["state"] == "done" and shown_by is None:
            shown_by = time.monotonic() + 60
        if time.monotonic() > (shown_by or deadline):
            pytest.fail(f"the page did not show the job ({job['state']}):\n" + "\n".join(problems))
        page.wait_for_timeout(250)


def _check_the_cursor(page, live, job: dict, classes: list[dict], target: str) -> None:
    """Click a pixel of ``target``'s colour in the axial plane: the HU and label shown under the
    cursor are the files' values at that point."""
    page.evaluate("window.guidegen.views.A.nv.setSliceType(window.guidegen.views.A.nv.sliceTypeAxial)")
    page.wait_for_timeout(500)
    colour = np.array(next(c["colour"] for c in classes if c["name"] == target))
    pixels = _pixels(page.locator("#viewA canvas").screenshot())
    inside = binary_erosion(np.all(np.abs(pixels - colour) <= 6, axis=-1), iterations=2)  # off the edges
    rows, columns = np.nonzero(inside)
    assert rows.size, f"no {target} in the axial plane"
    pick = rows.size // 2
    page.evaluate("window.guidegen.cursor = null")
    page.locator("#viewA canvas").click(position={"x": int(columns[pick]), "y": int(rows[pick])})
    page.wait_for_function("window.guidegen.cursor && window.guidegen.cursor.view === 'A'")
    cursor = page.evaluate("window.guidegen.cursor")
    files = {}
    for name in ("ct.nii.gz", "labels.nii.gz"):
        path = live.out / "jobs" / job["id"] / "result" / "case_000000" / name
        files[name] = nib.load(str(path))
    # The voxel read holds the point (the tiny model's CT is noise, so a neighbour would not do);
    # a point on a boundary between two voxels may be read from either.
    voxel = np.linalg.inv(files["ct.nii.gz"].affine) @ np.array([*cursor["mm"], 1.0])
    assert np.all(np.abs(voxel[:3] - np.array(cursor["vox"])) <= 0.5 + 1e-3), (cursor, voxel)
    assert np.allclose(files["ct.nii.gz"].affine, files["labels.nii.gz"].affine)
    ijk = tuple(int(v) for v in cursor["vox"])
    label = int(np.asarray(files["labels.nii.gz"].dataobj)[ijk])
    hu = float(files["ct.nii.gz"].get_fdata()[ijk])
    shown = page.inner_text("#cursor")
    assert cursor["label"] == label == next(c["id"] for c in classes if c["name"] == target), (cursor, label)
    assert abs(cursor["hu"] - hu) <= 1, (cursor, hu)
    assert shown == f"{cursor['hu']} HU, {next(c['display'] for c in classes if c['name'] == target)}", shown
    page.evaluate("window.guidegen.views.A.nv.setSliceType(window.guidegen.views.A.nv.sliceTypeMultiplanar)")
    page.wait_for_timeout(500)


def test_no_external_urls_in_the_page_or_the_vendored_viewer():
    static = Path(__file__).resolve().parents[2] / "src" / "guidegen" / "web" / "static"
    for name in ("index.html", "app.js"):
        text = (static / name).read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text, name
    assert (static / "vendor" / "LICENSE-niivue.txt").is_file()
