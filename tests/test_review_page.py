"""The review page of ``mahtnet serve`` in a real headless chromium (Playwright driving the
system's chromium, e.g. Debian's ``/usr/bin/chromium``; no browser download): open an X-ray of
the review folder, drag a landmark with the mouse, see the measurement change, save the
correction and export it; upload another X-ray from the browser.

The tiny untrained model of the tests puts its landmarks anywhere, even outside the image, so
the review image starts from a saved correction at the synthetic X-ray's true landmarks (a
review resumed where it was left). ``MAHTNET_SCREENSHOT=1`` also writes
``docs/figures/review_page.png``; ``MAHTNET_SCREENSHOT_MODEL=data/models/stage3.pt`` takes it
with that (trained) model and its own prediction instead.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ISBI_ROOT, REPO, tiny_unet_checkpoint
from test_serve import ENV, call, mahtnet, post_json, serving

from mahtnet.data.synthetic import generate_sample
from mahtnet.landmarks import LANDMARK_NAMES
from mahtnet.serve import load_corrections

pytestmark = pytest.mark.slow
K = len(LANDMARK_NAMES)
SPACING_MM = 0.5  # the synthetic X-rays'
A_POINT = LANDMARK_NAMES.index("subspinale")  # moves SNA and ANB
DRAG_PX = (40, 25)  # screen pixels
SCREENSHOT = os.environ.get("MAHTNET_SCREENSHOT") == "1"
SCREENSHOT_MODEL = os.environ.get("MAHTNET_SCREENSHOT_MODEL")


def chromium_executable() -> str | None:
    """``MAHTNET_CHROMIUM``, else a chromium or chrome on the PATH, else Playwright's own download."""
    candidates = [os.environ.get("MAHTNET_CHROMIUM")]
    candidates += [
        shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    ]
    for path in candidates:
        if path and Path(path).is_file():
            return path
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            own = p.chromium.executable_path
        return own if Path(own).is_file() else None
    except Exception:  # playwright missing or no browser
        return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    executable = chromium_executable()
    if executable is None:
        pytest.skip("no chromium executable (apt-get install chromium, or set MAHTNET_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    review = root / "xrays"
    review.mkdir()
    image, truth = generate_sample(7, 384, 480, SPACING_MM, 5.0, 0.05, 8.0)
    cv2.imwrite(str(review / "ceph.png"), image)
    upload, _ = generate_sample(8, 384, 480, SPACING_MM, 5.0, 0.05, 8.0)
    cv2.imwrite(str(root / "upload.png"), upload)
    # a screenshot model as given (relative: the figure shows no machine path)
    model = Path(SCREENSHOT_MODEL) if SCREENSHOT_MODEL else tiny_unet_checkpoint(root / "unet.pt", (64, 48))
    options = ["--out", review, "--device", "cpu", "--no-overlay", "--pixel-spacing", SPACING_MM]
    cmd = mahtnet("predict", review / "ceph.png", "--model", model, *options)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr
    return {"root": root, "review": review, "model": model, "truth": truth, "upload": root / "upload.png"}


@pytest.fixture(scope="module")
def server(setup):
    options = ["--pixel-spacing", SPACING_MM, "--review-dir", setup["review"]]
    with serving(setup["root"] / "serve.log", setup["model"], *options) as s:
        yield s


def start_from_truth(server, setup) -> np.ndarray:
    """Save a correction at the true landmarks through the API; the landmarks the page starts from."""
    item = call(server["port"], "GET", "/review/item?id=ceph.png").json()
    predicted = [[r["x_px"], r["y_px"]] for r in item["prediction"]["landmarks"]]
    if SCREENSHOT_MODEL:
        return np.array(predicted)  # a trained model: start from its own prediction
    start = setup["truth"].tolist()
    r = post_json(
        server["port"],
        "/review/correction?id=ceph.png",
        {"landmarks": start, "predicted": predicted, "pixel_spacing_mm": SPACING_MM},
    )
    assert r.status == 200, r.body
    return np.array(start)


def text(page, selector: str) -> str:
    return page.locator(selector).inner_text().strip()


def test_drag_a_landmark_save_and_export(browser, server, setup, tmp_path):
    review = setup["review"]
    prediction_before = (review / "ceph.json").read_bytes()
    start = start_from_truth(server, setup)
    page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(f"{server['url']}/review")
    page.wait_for_selector("body[data-state=idle]")
    page.click("#items button[data-id='ceph.png']")
    page.wait_for_selector("body[data-state=ready]")
    assert page.locator("#canvas .lm").count() == K
    assert page.locator("#measurements tbody tr").count() == 8
    sna_before, anb_before = text(page, "#m-SNA .value"), text(page, "#m-ANB .value")
    assert sna_before.endswith("°")

    # drag the A point with the mouse
    dot = page.locator(f"#canvas .lm[data-index='{A_POINT}'] circle.dot")
    box = dot.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    hit = page.evaluate(f"document.elementFromPoint({cx}, {cy}).closest('.lm').dataset.index")
    assert hit == str(A_POINT)  # the mouse grabs this marker, not another one
    px_per_image_px = page.evaluate("document.getElementById('canvas').getScreenCTM().a")
    count = int(page.locator("#measurements").get_attribute("data-count"))
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + DRAG_PX[0], cy + DRAG_PX[1], steps=8)
    page.mouse.up()
    page.wait_for_function(
        f"document.querySelector('#m-SNA .value').textContent.trim() !== {json.dumps(sna_before)}"
        f" && Number(document.getElementById('measurements').dataset.count) > {count}"
    )
    page.wait_for_function(  # dropped, and the measurements of the final position shown
        "!document.querySelector('.lm.dragging')"
        " && !('busy' in document.getElementById('measurements').dataset)"
    )
    assert text(page, "#m-SNA .value") != sna_before and text(page, "#m-ANB .value") != anb_before
    assert "moved" in page.locator(f"#lm-row-{A_POINT}").get_attribute("class")
    expected = start[A_POINT] + np.array(DRAG_PX) / px_per_image_px

    if SCREENSHOT:
        target = REPO / "docs" / "figures" / "review_page.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target))

    # save: next to the image, the model's prediction untouched
    page.click("#save")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('saved')")
    assert text(page, "#status") == "saved ceph.png.corrected.json, ceph.png.corrected.txt"
    assert (review / "ceph.json").read_bytes() == prediction_before
    saved = json.loads((review / "ceph.png.corrected.json").read_text())
    points = np.array([[r["x_px"], r["y_px"]] for r in saved["landmarks"]])
    np.testing.assert_allclose(points[A_POINT], expected, atol=0.75)  # within a screen pixel or so
    others = np.arange(K) != A_POINT
    np.testing.assert_allclose(points[others], start[others], atol=1e-9)
    shown = text(page, "#m-SNA .value")
    assert shown == f"{saved['measurements']['SNA']['value']:.2f} °"  # the server's value is what is shown
    loaded = load_corrections(review)[review / "ceph.png"]
    np.testing.assert_allclose(loaded.landmarks, points)
    lines = (review / "ceph.png.corrected.txt").read_text().splitlines()
    assert len(lines) == K and lines[A_POINT] == f"{round(points[A_POINT][0])},{round(points[A_POINT][1])}"

    # export: the downloaded files hold the same coordinate
    with page.expect_download() as info:
        page.click("#export-json")
    exported = json.loads(Path(info.value.path()).read_text())
    assert info.value.suggested_filename == "ceph.png.corrected.json"
    np.testing.assert_allclose(
        [exported["landmarks"][A_POINT]["x_px"], exported["landmarks"][A_POINT]["y_px"]], points[A_POINT]
    )
    with page.expect_download() as info:
        page.click("#export-csv")
    rows = Path(info.value.path()).read_text().splitlines()
    assert len(rows) == K + 1 and rows[1 + A_POINT].startswith("ceph.png,subspinale,")

    # a fine move with the keyboard: the selected landmark, one pixel
    x_before = float(text(page, f"#lm-row-{A_POINT} .x"))
    page.keyboard.press("ArrowRight")
    assert float(text(page, f"#lm-row-{A_POINT} .x")) == pytest.approx(x_before + 1, abs=0.051)
    assert errors == []


def test_upload_from_the_browser(browser, server, setup):
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.goto(f"{server['url']}/review")
    page.wait_for_selector("body[data-state=idle]")
    page.set_input_files("#upload", str(setup["upload"]))
    page.wait_for_selector("body[data-state=ready]")
    assert page.locator("#canvas .lm").count() == K
    assert text(page, "#image-info").startswith("upload.png: 384×480 px, 0.5 mm/px")
    assert page.locator("#save").is_disabled()  # nowhere to save an upload: export only
    assert text(page, "#m-MW .value") != "—"  # the spacing is known: MW in mm


@pytest.fixture(scope="module")
def release_review(tmp_path_factory):
    """The released model serving a review folder of two synthetic X-rays, each with a correction
    saved at its true landmarks (through the API, as the page saves it). The release's verdict
    refuses them (no skull it knows): they are read anyway (``force=true``), as "Read anyway"
    does on the page."""
    root = tmp_path_factory.mktemp("release-review")
    review = root / "xrays"
    review.mkdir()
    truths = {}
    for name, seed in (("a.png", 11), ("b.png", 12)):
        image, truths[name] = generate_sample(seed, 384, 480, SPACING_MM, 5.0, 0.05, 8.0)
        cv2.imwrite(str(review / name), image)
    options = ["--pixel-spacing", SPACING_MM, "--review-dir", review]
    with serving(root / "serve.log", None, *options) as s:
        for name, truth in truths.items():
            item = call(s["port"], "GET", f"/review/item?id={name}&force=true").json()
            assert item["prediction"]["forced"], item["prediction"]["verdict"]
            predicted = [[r["x_px"], r["y_px"]] for r in item["prediction"]["landmarks"]]
            body = {"landmarks": truth.tolist(), "predicted": predicted, "pixel_spacing_mm": SPACING_MM}
            r = post_json(s["port"], f"/review/correction?id={name}", body)
            assert r.status == 200, r.body
        yield {**s, "review": review}


def test_model_panel_adapt_and_use(browser, release_review):
    """The Model panel names the release and the saved corrections with the one adapt command;
    "Adapt to my 2 corrections" writes a new model folder, "Use this model" serves it, and the
    panel and the open image say so."""
    review = release_review["review"]
    corrections = {p.name: p.read_bytes() for p in review.glob("*.corrected.*")}
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{release_review['url']}/review")
    page.wait_for_selector("body[data-state=idle]")
    serving_model = page.locator("#model-serving")
    assert serving_model.get_attribute("data-name") == "release"
    assert serving_model.get_attribute("data-adapted") == "0"
    assert text(page, "#model-serving").startswith("Points by the release: MAHT-Net, ISBI 2015 release")
    assert page.locator("#corrections-count").get_attribute("data-count") == "2"
    assert text(page, "#corrections-count").startswith("2 corrections saved in the review folder")
    assert text(page, "#adapt-command") == (
        "mahtnet adapt xrays --out xrays/.mahtnet-models/adapted-k2 --pixel-spacing 0.5"
    )
    assert page.locator("#models-box").is_hidden()  # the release only: nothing to switch to yet

    page.click("#items button[data-id='b.png']")
    page.wait_for_selector("body[data-state=ready]")
    assert page.locator("#verdict.refused").is_visible()  # a synthetic X-ray: refused, no landmarks
    assert page.locator("#canvas .lm").count() == 0
    page.click("#read-anyway")
    page.wait_for_selector("#verdict.forced[data-forced='1']")
    page.wait_for_selector("body[data-state=ready]")
    assert "decoding refined" in text(page, "#image-info")

    assert text(page, "#adapt") == "Adapt to my 2 corrections"
    page.click("#adapt")
    page.wait_for_function("document.getElementById('model-status').textContent.startsWith('wrote ')")
    name = page.locator("#models").input_value()
    assert name.startswith("adapted-k2-") and (review / ".mahtnet-models" / name / "card.json").is_file()
    assert f"wrote {name}: k=2, method " in text(page, "#model-status")
    assert serving_model.get_attribute("data-name") == "release"  # written, not served yet

    page.click("#use-model")
    page.wait_for_function("document.getElementById('model-status').textContent.startsWith('serving ')")
    page.wait_for_selector("body[data-state=ready]")
    assert serving_model.get_attribute("data-name") == name
    assert serving_model.get_attribute("data-adapted") == "1"
    assert "adapted: k=2 corrections, method" in text(page, "#model-serving")
    assert "adapted, k=2" in text(page, "#model-info")
    page.wait_for_function("document.getElementById('image-info').textContent.includes('decoding adapted')")
    assert page.locator("#verdict.forced").is_visible()  # read anyway again: the page remembers it
    assert page.locator("#use-model").is_disabled()  # the selected model is the served one
    assert {p.name: p.read_bytes() for p in review.glob("*.corrected.*")} == corrections
    assert errors == []


# ----- the image verdict: the banner and the check-first list ----------------------------------

GOOD = ISBI_ROOT / "RawImage" / "TrainingData" / "005.jpg"  # ok, two landmarks to check first


@pytest.fixture(scope="module")
def trust_review(tmp_path_factory):
    """The released model, ``--pixel-spacing 0.1``, on a review folder of two ISBI X-rays (one
    ok, one unusual) and one image of uniform noise."""
    if not GOOD.is_file():
        pytest.skip(f"ISBI 2015 data not present at {ISBI_ROOT}")
    root = tmp_path_factory.mktemp("trust-review")
    review = root / "xrays"
    review.mkdir()
    shutil.copy(GOOD, review / "good.jpg")
    shutil.copy(
        ISBI_ROOT / "RawImage" / "Test1Data" / "194.jpg", review / "unusual.jpg"
    )  # read, all to check
    noise = np.random.default_rng(0).integers(0, 256, (2400, 1935), dtype=np.uint8)
    cv2.imwrite(str(review / "noise.png"), noise)
    cv2.imwrite(str(root / "tiny.png"), np.full((8, 8), 128, np.uint8))
    with serving(root / "serve.log", None, "--pixel-spacing", "0.1", "--review-dir", review) as s:
        yield {**s, "review": review, "tiny": root / "tiny.png"}


def test_verdict_banner_and_check_first(browser, trust_review):
    """The noise item: the refused banner, no landmarks, no measurements, and "Read anyway"
    reads it marked forced; the ISBI item: no banner, the check-first list in the JSON's order
    with each bound, a click selects the landmark; an 8x8 upload: refused (the 422's verdict)."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{trust_review['url']}/review")
    page.wait_for_selector("body[data-state=idle]")
    banner = page.locator("#verdict")
    assert banner.is_hidden()

    page.click("#items button[data-id='noise.png']")
    page.wait_for_selector("body[data-state=ready]")
    assert banner.is_visible() and "refused" in banner.get_attribute("class")
    assert banner.get_attribute("data-verdict") == "not_a_lateral_cephalogram"
    assert text(page, "#verdict-text").startswith("Refused — not a lateral cephalogram: nothing fits a skull")
    assert page.locator("#canvas .lm").count() == 0 and page.locator("#landmarks tbody tr").count() == 0
    assert page.locator("#measurements tbody tr").count() == 0
    assert page.locator("#check-first-box").is_hidden() and page.locator("#export-json").is_disabled()
    page.click("#read-anyway")
    page.wait_for_selector("#verdict[data-forced='1']")
    page.wait_for_selector("body[data-state=ready]")
    assert "forced" in banner.get_attribute("class") and text(page, "#verdict-text").startswith("Forced")
    assert page.locator("#read-anyway").is_hidden()
    assert page.locator("#canvas .lm").count() == K
    page.wait_for_function("document.querySelectorAll('#measurements tbody tr').length === 8")

    expected = call(trust_review["port"], "GET", "/review/item?id=good.jpg").json()["prediction"]
    assert expected["verdict"] == "ok" and expected["check_first"]
    page.click("#items button[data-id='good.jpg']")
    page.wait_for_selector("#verdict[data-verdict='ok'][hidden]", state="attached")  # no banner
    page.wait_for_selector("body[data-state=ready]")
    assert page.locator("#canvas .lm").count() == K
    items = page.locator("#check-first button")
    assert [items.nth(i).get_attribute("data-name") for i in range(items.count())] == expected["check_first"]
    rows = {r["name"]: r for r in expected["landmarks"]}
    for i, name in enumerate(expected["check_first"]):
        bound = rows[name]["error_bound_mm"]
        assert text(page, f"#check-first li:nth-child({i + 1}) button") == (
            f"{name.replace('_', ' ')} ±{bound:.1f} mm (90 %)"
        )
    first = expected["check_first"][0]
    k = LANDMARK_NAMES.index(first)
    assert text(page, f"#lm-row-{k} .bound") == f"±{rows[first]['error_bound_mm']:.1f}"
    assert "flag" in page.locator(f"#lm-row-{k}").get_attribute("class")
    items.first.click()
    assert "selected" in page.locator(f"#lm-row-{k}").get_attribute("class")
    assert "selected" in page.locator(f"#canvas .lm[data-index='{k}']").get_attribute("class")

    page.set_input_files("#upload", str(trust_review["tiny"]))
    page.wait_for_selector("#verdict[data-verdict='too_small']")
    page.wait_for_selector("body[data-state=ready]")
    assert text(page, "#verdict-text").startswith("Refused — too small: 8x8 px")
    assert page.locator("#read-anyway").is_visible() and page.locator("#canvas .lm").count() == 0
    assert text(page, "#status") == "tiny.png: refused (too small), no landmarks"

    page.click("#items button[data-id='unusual.jpg']")  # unusual: read, a banner, every landmark to check
    page.wait_for_selector("#verdict[data-verdict='unusual']")
    page.wait_for_selector("body[data-state=ready]")
    assert banner.is_visible() and "info" in banner.get_attribute("class")
    assert text(page, "#verdict-text").startswith("Unusual — read, but unlike every training image")
    assert page.locator("#canvas .lm").count() == K and page.locator("#check-first button").count() == K
    assert errors == []
