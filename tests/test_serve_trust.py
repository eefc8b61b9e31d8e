"""``mahtnet serve`` and the image verdict (issue 41, "know when it is wrong"): the released model
(its card's ``trust`` block) on a real server subprocess, one start-up, ``--pixel-spacing 0.1``.

An ISBI image is read (200, ``verdict: ok``, a bound per landmark and the check-first list); the
same image mirrored is read mirrored and mapped back (200, ``verdict: mirrored``, the same points
mirrored); turned by 90 degrees, uniform noise and an 8x8 image are refused (422: the one-line
error, the verdict and no landmarks) unless ``force=true`` (200, marked ``forced``); the review
folder's endpoint answers a refused image with its verdict (200) so the page can show it."""

import json
import urllib.parse

import cv2
import numpy as np
import pytest
from conftest import ISBI_ROOT
from test_serve import call, serving

from mahtnet.data.images import read_xray
from mahtnet.landmarks import LANDMARK_NAMES

pytestmark = pytest.mark.slow
K = len(LANDMARK_NAMES)
SPACING_MM = 0.1
GOOD = ISBI_ROOT / "RawImage" / "TrainingData" / "005.jpg"  # ok, two landmarks flagged
UNUSUAL = ISBI_ROOT / "RawImage" / "Test1Data" / "194.jpg"  # read, unlike every training image


def png(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return data.tobytes()


def noise(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (2400, 1935), dtype=np.uint8)


def post_png(port: int, name: str, data: bytes, query: str = ""):
    q = urllib.parse.urlencode({"name": name}) + (f"&{query}" if query else "")
    return call(port, "POST", f"/predict?{q}", data, "image/png")


def points(doc) -> np.ndarray:
    return np.array([[r["x_px"], r["y_px"]] for r in doc["landmarks"]])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not GOOD.is_file():
        pytest.skip(f"ISBI 2015 data not present at {ISBI_ROOT}")
    root = tmp_path_factory.mktemp("serve-trust")
    review = root / "review"
    review.mkdir()
    cv2.imwrite(str(review / "noise.png"), noise(1))
    pixels = read_xray(GOOD).pixels  # what the network reads; sent as PNG, so every copy is exact
    with serving(root / "serve.log", None, "--pixel-spacing", SPACING_MM, "--review-dir", review) as s:
        yield {**s, "pixels": pixels, "review": review}


def assert_refused(r, name: str, verdict: str) -> dict:
    assert r.status == 422, r.body
    body = r.json()
    error = body["error"]
    assert "\n" not in error and error.startswith(f"{name}: refused: {verdict}: "), error
    assert body["verdict"] == verdict and body["verdict_reason"] in error
    assert body["image"] == name and body["forced"] is False
    assert body["landmarks"] == [] and body["measurements"] is None
    return body


def test_ok_and_mirrored(server):
    """An ISBI image: verdict ok, 19 landmarks, each with its bound, the check-first list in
    order; mirrored left-right: verdict mirrored, the same reading mirrored back (x -> W - 1 - x)."""
    port, pixels = server["port"], server["pixels"]
    r = post_png(port, "ceph.png", png(pixels))
    assert r.status == 200, r.body
    doc = r.json()
    assert doc["verdict"] == "ok" and doc["forced"] is False
    assert len(doc["landmarks"]) == K and doc["error_bound_coverage"] == 0.9
    rows = doc["landmarks"]
    assert all(0 < row["confidence"] <= 1 for row in rows)
    assert all(row["error_bound_mm"] > row["expected_error_mm"] > 0 for row in rows)
    flagged = [row for row in rows if row["check_first"]]
    assert flagged, "005.jpg has landmarks to check first"
    by_confidence = sorted(flagged, key=lambda row: row["confidence"])
    assert doc["check_first"] == [row["name"] for row in by_confidence]
    assert doc["measurements"]["ANB"]["value"] is not None

    r = post_png(port, "mirrored.png", png(np.ascontiguousarray(pixels[:, ::-1])))
    assert r.status == 200, r.body
    m = r.json()
    assert m["verdict"] == "mirrored" and m["verdict_reason"] and m["forced"] is False
    assert len(m["landmarks"]) == K
    back = points(m)
    back[:, 0] = pixels.shape[1] - 1 - back[:, 0]
    assert np.abs(back - points(doc)).max() * SPACING_MM < 0.05
    assert m["check_first"] == doc["check_first"]


def test_unusual_is_read_all_to_check_and_a_blurred_image_refused(server):
    """A cephalogram unlike every training image: 200, ``unusual``, every landmark on the
    check-first list; the good image blurred by 3 mm: a 422, too blurred to read."""
    port = server["port"]
    r = post_png(port, "unusual.png", png(read_xray(UNUSUAL).pixels))
    assert r.status == 200, r.body
    doc = r.json()
    assert doc["verdict"] == "unusual" and "check every landmark" in doc["verdict_reason"]
    assert len(doc["check_first"]) == K and doc["measurements"]["ANB"]["value"] is not None
    blurred = cv2.GaussianBlur(server["pixels"], (0, 0), 3.0 / SPACING_MM)
    body = assert_refused(
        post_png(port, "blurred.png", png(blurred)), "blurred.png", "not_a_lateral_cephalogram"
    )
    assert body["verdict_reason"].startswith("too blurred to read")


def test_refused_images_get_a_422_with_the_verdict(server):
    """Turned by 90 degrees, uniform noise, 8x8 pixels: a 422 with the one-line reason, the
    verdict and no landmarks (the image asked for comes along: the review page shows it)."""
    port, pixels = server["port"], server["pixels"]
    rotated = png(np.ascontiguousarray(np.rot90(pixels)))
    body = assert_refused(post_png(port, "turned.png", rotated, "image=true"), "turned.png", "rotated")
    assert "turned 90 degrees counter-clockwise" in body["verdict_reason"]
    assert body["width_px"] == pixels.shape[0] and body["image_png"]
    assert_refused(post_png(port, "noise.png", png(noise())), "noise.png", "not_a_lateral_cephalogram")
    tiny_png = png(np.full((8, 8), 128, np.uint8))
    tiny = assert_refused(post_png(port, "tiny.png", tiny_png), "tiny.png", "too_small")
    assert tiny["verdict_reason"].startswith("8x8 px")
    assert call(port, "GET", "/health").json()["in_flight"] == 0  # and the server goes on


def test_force_reads_a_refused_image_marked(server):
    r = post_png(server["port"], "noise.png", png(noise()), "force=true")
    assert r.status == 200, r.body
    doc = r.json()
    assert doc["forced"] is True and doc["verdict"] == "not_a_lateral_cephalogram"
    assert doc["verdict_reason"] and len(doc["landmarks"]) == K and doc["measurements"] is not None


def test_review_item_answers_a_refused_image(server):
    """``GET /review/item`` of a refused image: 200 with the verdict and no landmarks (predicted
    now, or ``mahtnet predict``'s refused ``<stem>.json``); with ``force=true`` read anyway, marked."""
    port = server["port"]
    r = call(port, "GET", "/review/item?id=noise.png")
    assert r.status == 200, r.body
    item = r.json()
    p = item["prediction"]
    assert item["prediction_source"] == "model" and p["image"] == "noise.png"
    assert p["verdict"] == "not_a_lateral_cephalogram" and p["landmarks"] == [] and not p["forced"]

    (server["review"] / "noise.json").write_text(json.dumps(p))  # as mahtnet predict writes it
    item = call(port, "GET", "/review/item?id=noise.png").json()
    assert item["prediction_source"] == "file" and item["prediction"]["landmarks"] == []

    r = call(port, "GET", "/review/item?id=noise.png&force=true")
    assert r.status == 200, r.body
    assert r.json()["prediction_source"] == "model"  # the file holds the refusal: read now
    p = r.json()["prediction"]
    assert p["forced"] is True and p["verdict"] == "not_a_lateral_cephalogram" and len(p["landmarks"]) == K
