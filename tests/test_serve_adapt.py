"""The review page's loop on a real ``mahtnet serve`` with the released model: corrections saved
through the review endpoint, ``POST /review/adapt`` (the same ``adapt()`` as ``mahtnet adapt``,
a new folder of ``--models-dir``), ``GET /models``, ``POST /model/use`` (the served model
switched), the adapted predictions, and bad requests answered in one line while the server goes
on. The release's files and the corrections are never changed."""

import hashlib
import json
import re
import shutil

import numpy as np
import pytest
from conftest import isbi_review_folder
from test_serve import call, post_json, predict_upload, serving

from mahtnet.release import RELEASE_DIR

pytestmark = pytest.mark.slow
OFFSET_PX = np.array([6.0, -4.0])  # the clinic's convention: 0.6 mm right, 0.4 mm up
FRESH = re.compile(r"^adapted-k3-\d{8}T\d{6}Z(-\d+)?$")


def digests(folder) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def points(doc) -> np.ndarray:
    return np.array([[r["x_px"], r["y_px"]] for r in doc["landmarks"]])


def save_correction(port: int, item_id: str) -> np.ndarray:
    """The model's prediction of ``item_id`` moved by OFFSET_PX, saved as the page saves it."""
    pred = call(port, "GET", f"/review/item?id={item_id}").json()["prediction"]
    predicted = points(pred)
    body = {
        "landmarks": (predicted + OFFSET_PX).tolist(),
        "predicted": predicted.tolist(),
        "pixel_spacing_mm": pred["pixel_spacing_mm"],
        "width_px": pred["width_px"],
        "height_px": pred["height_px"],
        "model": pred["model"],
        "decoding": pred["decoding"],
    }
    r = post_json(port, f"/review/correction?id={item_id}", body)
    assert r.status == 200, r.body
    return predicted


def assert_one_line_error(r, status: int, *words: str) -> str:
    assert r.status == status, f"{r.status} {r.body[:300]!r}"
    doc = r.json()
    assert list(doc) == ["error"] and "\n" not in doc["error"] and "Traceback" not in doc["error"]
    for word in words:
        assert word in doc["error"], f"{doc['error']!r} lacks {word!r}"
    return doc["error"]


@pytest.fixture(scope="module")
def clinic(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-adapt")
    review = isbi_review_folder(root / "review")
    return {"root": root, "review": review}


def test_adapt_use_and_switch_back(clinic):
    root, review = clinic["root"], clinic["review"]
    release_before = digests(RELEASE_DIR)
    with serving(root / "serve.log", None, "--review-dir", review, "--pixel-spacing", "0.1") as s:
        port = s["port"]
        assert call(port, "GET", "/model").json()["serving"] == "release"
        models = call(port, "GET", "/models").json()
        assert models["current"] == "release" and [m["name"] for m in models["models"]] == ["release"]
        assert models["models_dir"] == ".mahtnet-models"

        # nothing to adapt to yet; unknown names are looked up, never used as paths
        assert_one_line_error(post_json(port, "/review/adapt", {}), 422, "no corrections saved in review")
        for name in ("../x", "nope", "/etc", ".mahtnet-models", "", "release/../release"):
            assert_one_line_error(post_json(port, "/model/use", {"name": name}), 404, "no model named")
        assert_one_line_error(post_json(port, "/model/use", {}), 422, "body.name")

        predicted = {f"c{i}.jpg": save_correction(port, f"c{i}.jpg") for i in range(3)}
        listing = call(port, "GET", "/review/items").json()
        assert [item["id"] for item in listing["items"]] == ["c0.jpg", "c1.jpg", "c2.jpg"]
        assert listing["adapt"] == {
            "corrections": 3,
            "command": "mahtnet adapt review --out review/.mahtnet-models/adapted-k3 --pixel-spacing 0.1",
            "base": "release",
            "reason": None,
        }
        corrections_before = {p.name: p.read_bytes() for p in sorted(review.glob("*.corrected.*"))}
        assert len(corrections_before) == 6
        bad = post_json(port, "/review/adapt", {"method": "median"})
        assert_one_line_error(bad, 422, "unknown adaptation method 'median'")

        r = post_json(port, "/review/adapt", {"method": "mean"})
        assert r.status == 200, r.body
        first = r.json()
        assert str(root) not in r.body.decode()  # names, never a path of this machine
        assert FRESH.match(first["name"]) and first["base"] == "release"
        assert first["k"] == 3 and first["method"] == "mean" and first["chosen_by"] == "mean"
        assert first["leave_one_out"]["mre_mm"] == pytest.approx(0, abs=1e-6)  # one offset for all
        assert first["leave_one_out"]["unadapted_mre_mm"] == pytest.approx(0.1 * np.hypot(*OFFSET_PX))
        folder = review / ".mahtnet-models" / first["name"]
        card = json.loads((folder / "card.json").read_text())
        assert card["adaptation"]["k"] == 3 and card["base"]["name"] == "MAHT-Net, ISBI 2015 release"

        models = call(port, "GET", "/models").json()
        assert [m["name"] for m in models["models"]] == ["release", first["name"]]
        assert models["models"][1]["adaptation"]["k"] == 3 and models["current"] == "release"
        assert call(port, "GET", "/model").json()["recipe"]["adaptation"] is None  # not served yet

        r = post_json(port, "/model/use", {"name": first["name"]})
        assert r.status == 200, r.body
        assert r.json()["serving"] == first["name"]
        info = call(port, "GET", "/model").json()
        assert info["serving"] == first["name"]
        assert info["recipe"]["adaptation"]["k"] == 3 and info["recipe"]["adaptation"]["method"] == "mean"
        reply = predict_upload(port, review / "c0.jpg", "image/jpeg")
        assert reply.status == 200, reply.body
        adapted = reply.json()
        assert adapted["decoding"] == "adapted"
        np.testing.assert_allclose(points(adapted), predicted["c0.jpg"] + OFFSET_PX, atol=1e-6)
        item = call(port, "GET", "/review/item?id=c1.jpg").json()  # the served model predicts now
        assert item["prediction_source"] == "model" and item["prediction"]["decoding"] == "adapted"
        assert call(port, "GET", "/models").json()["current"] == first["name"]

        # adapting while an adapted model is served starts from its base: never stacked
        r = post_json(port, "/review/adapt", {})
        assert r.status == 200, r.body
        second = r.json()
        assert second["base"] == "release" and second["name"] != first["name"] and FRESH.match(second["name"])
        card2 = json.loads((review / ".mahtnet-models" / second["name"] / "card.json").read_text())
        assert card2["base"] == card["base"]  # the release's name and file checksums
        assert call(port, "GET", "/review/items").json()["adapt"]["base"] == "release"

        r = post_json(port, "/model/use", {"name": "release"})
        assert r.status == 200, r.body
        back = predict_upload(port, review / "c0.jpg", "image/jpeg").json()
        assert back["decoding"] == "refined"
        np.testing.assert_allclose(points(back), predicted["c0.jpg"], atol=1e-6)

        # bad corrections: adapt's one-line error, naming the file, no path of this machine
        shutil.copy(review / "c0.jpg", review / "dup.jpg")
        save_correction(port, "dup.jpg")
        error = assert_one_line_error(post_json(port, "/review/adapt", {}), 422, "duplicate correction")
        assert str(root) not in error and "c0.jpg.corrected.json" in error
        assert [m["name"] for m in call(port, "GET", "/models").json()["models"]] == [
            "release",
            first["name"],
            second["name"],
        ]
        assert predict_upload(port, review / "c1.jpg", "image/jpeg").status == 200
        assert s["proc"].poll() is None

    assert digests(RELEASE_DIR) == release_before
    for name, data in corrections_before.items():
        assert (review / name).read_bytes() == data
    assert sorted(p.name for p in (review / ".mahtnet-models").iterdir()) == sorted(
        [first["name"], second["name"]]
    )  # no temporary folder left behind
