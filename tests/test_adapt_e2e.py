"""``mahtnet adapt`` end to end with the released model: corrections saved by the review page's
own endpoint (a real ``mahtnet serve``), the adapted folder written by the real command, then
read by ``mahtnet predict --model DIR`` and ``mahtnet serve --model DIR``."""

import json
import subprocess

import numpy as np
import pytest
from conftest import isbi_review_folder
from test_serve import ENV, call, mahtnet, post_json, predict_upload, serving

pytestmark = pytest.mark.slow
OFFSET_PX = np.array([6.0, -4.0])  # the clinic's convention: 0.6 mm right, 0.4 mm up


def run(*args):
    result = subprocess.run(mahtnet(*args), capture_output=True, text=True, timeout=600, env=ENV)
    return result


@pytest.fixture(scope="module")
def clinic(tmp_path_factory):
    """Three ISBI X-rays reviewed on the page, each saved with every landmark moved by OFFSET_PX."""
    root = tmp_path_factory.mktemp("adapt")
    review = isbi_review_folder(root / "review")
    with serving(root / "review.log", None, "--review-dir", review, "--pixel-spacing", "0.1") as s:
        for i in range(3):
            item = call(s["port"], "GET", f"/review/item?id=c{i}.jpg").json()
            pred = item["prediction"]
            predicted = [[r["x_px"], r["y_px"]] for r in pred["landmarks"]]
            body = {
                "landmarks": (np.array(predicted) + OFFSET_PX).tolist(),
                "predicted": predicted,
                "pixel_spacing_mm": pred["pixel_spacing_mm"],
                "width_px": 1935,
                "height_px": 2400,
                "model": pred["model"],
                "decoding": pred["decoding"],
            }
            r = post_json(s["port"], f"/review/correction?id=c{i}.jpg", body)
            assert r.status == 200, r.body
    return root


def test_adapt_from_the_review_page_then_predict_and_serve_with_the_folder(clinic, tmp_path):
    review, out = clinic / "review", tmp_path / "clinic-a"
    r = run("adapt", review, "--out", out, "--method", "mean")
    assert r.returncode == 0, r.stderr
    assert "3 corrected images, method mean" in r.stdout
    card = json.loads((out / "card.json").read_text())
    assert card["adaptation"]["k"] == 3 and card["reader"]["adaptation"] == "adaptation.json"
    assert [c["file"] for c in card["adaptation"]["corrections"]] == [
        f"c{i}.jpg.corrected.json" for i in range(3)
    ]
    assert "/" not in json.dumps(card["adaptation"]["corrections"])  # names, never paths
    assert r.stdout.count("\n") == 1

    image = review / "c0.jpg"
    for model, where in (("", tmp_path / "base"), (out, tmp_path / "adapted")):
        args = ["predict", image, "--pixel-spacing", "0.1", "--out", where, "--no-overlay"]
        r = run(*args, *(["--model", model] if model else []))
        assert r.returncode == 0, r.stderr
    base = json.loads((tmp_path / "base" / "c0.json").read_text())
    adapted = json.loads((tmp_path / "adapted" / "c0.json").read_text())
    assert adapted["decoding"] == "adapted" and base["decoding"] == "refined"
    moved = np.array([[b["x_px"], b["y_px"]] for b in base["landmarks"]]) + OFFSET_PX
    np.testing.assert_allclose([[a["x_px"], a["y_px"]] for a in adapted["landmarks"]], moved, atol=1e-6)

    with serving(tmp_path / "serve.log", out, "--pixel-spacing", "0.1") as s:
        info = call(s["port"], "GET", "/model").json()
        reply = predict_upload(s["port"], image, "image/jpeg")
    assert info["recipe"]["adaptation"]["k"] == 3 and info["recipe"]["adaptation"]["method"] == "mean"
    assert reply.status == 200, reply.body
    assert {**reply.json(), "image": None} == {**adapted, "image": None}

    again = run("adapt", review, "--out", out)
    assert again.returncode != 0 and "already exists" in again.stderr and again.stderr.count("\n") == 1
