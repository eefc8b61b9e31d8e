"""mahtnet.adapt: corrections -> an adapted model folder; every bad input a one-line error,
nothing written."""

import json

import numpy as np
import pytest
from PIL import Image

from mahtnet.adapt import build, sources
from mahtnet.data.images import DataError
from mahtnet.decoding.conventions import Convention
from mahtnet.landmarks import NUM_LANDMARKS
from mahtnet.serve.review import correction_document, save_correction

K = NUM_LANDMARKS
W, H = 200, 240
OFFSET_PX = np.array([6.0, -4.0])  # the clinic's convention: 0.6 mm right, 0.4 mm up, every landmark


def _model_points(image):
    """A stand-in base model: landmarks on a fixed layout shifted by the image's own number."""
    n = int("".join(c for c in image.stem if c.isdigit()) or 0)
    rng = np.random.default_rng(0)
    layout = rng.uniform(20, 180, size=(K, 2))
    return layout + [n % 7, n % 5]


def predict(image, spacing):
    return _model_points(image)


def _images(folder, n, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"x{i:02d}.png"
        Image.fromarray(np.full((H, W), i * 3 % 255, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _review_corrections(folder, n, spacing=0.1, start=0):
    """n images with the review page's correction files (predicted = the stand-in model)."""
    for path in _images(folder, n, start):
        pred = _model_points(path)
        doc = correction_document(path.name, pred + OFFSET_PX, spacing, "test", W, H, predicted=pred)
        save_correction(path, doc)


@pytest.fixture
def base(tmp_path):
    """A base model folder: files and a card, like the release."""
    folder = tmp_path / "base"
    folder.mkdir()
    files = {}
    for name in ("maht_net.onnx", "shape_prior.npz"):
        (folder / name).write_bytes(name.encode())
        files[name] = {"sha256": "x", "bytes": len(name)}
    card = {
        "name": "base model",
        "files": files,
        "reader": {"model": "maht_net.onnx", "shape_prior": "shape_prior.npz"},
    }
    (folder / "card.json").write_text(json.dumps(card))
    return folder / "card.json"


def test_review_corrections_make_an_adapted_folder_that_learned_the_offset(tmp_path, base):
    _review_corrections(tmp_path / "scans", 6)
    out = tmp_path / "clinic"
    card = build.adapt(tmp_path / "scans", base, out, predict, method="mean")
    assert sorted(p.name for p in out.iterdir()) == [
        "adaptation.json",
        "card.json",
        "maht_net.onnx",
        "shape_prior.npz",
    ]
    assert card["reader"]["adaptation"] == "adaptation.json" and card["adaptation"]["k"] == 6
    assert len(card["adaptation"]["corrections"]) == 6 and card["base"]["name"] == "base model"
    assert (
        card["adaptation"]["leave_one_out"]["mre_mm"]
        < 1e-9
        < card["adaptation"]["leave_one_out"]["unadapted_mre_mm"]
    )
    conv = Convention.from_dict(json.loads((out / "adaptation.json").read_text()))
    np.testing.assert_allclose(conv.offset, np.tile(OFFSET_PX * 0.1, (K, 1)), atol=1e-9)
    assert not list(tmp_path.glob(".clinic.*"))  # no temporary folder left behind
    auto = build.adapt(tmp_path / "scans", base, tmp_path / "auto", predict)
    assert auto["adaptation"]["chosen_by"] == "auto" and auto["adaptation"]["method"] in (
        "mean",
        "shrunk",
        "frame-mean",
        "frame-shrunk",
    )


def test_isbi_annotations_need_a_pixel_spacing(tmp_path, base):
    for path in _images(tmp_path / "scans", 3):
        (path.with_suffix(".txt")).write_text(
            "".join(f"{x:.0f},{y:.0f}\n" for x, y in _model_points(path) + 5)
        )
    with pytest.raises(ValueError, match="no pixel spacing known; give --pixel-spacing"):
        build.adapt(tmp_path / "scans", base, tmp_path / "out", predict)
    card = build.adapt(
        tmp_path / "scans", base, tmp_path / "out", predict, method="mean", pixel_spacing_mm=0.1
    )
    assert (
        card["adaptation"]["pixel_spacing_mm"] == 0.1
        and card["adaptation"]["corrections"][0]["file"] == "x00.txt"
    )


def _break(folder, how):
    path = sorted(folder.glob("*.corrected.json"))[1]
    doc = json.loads(path.read_text())
    if how == "18 landmarks":
        doc["landmarks"] = doc["landmarks"][:18]
    elif how == "nan":
        doc["landmarks"][2]["x_px"] = float("nan")
    elif how == "outside":
        doc["landmarks"][4]["x_px"] = W + 50.0
    elif how == "spacing":
        doc["pixel_spacing_mm"] = 0.2
    elif how == "other model":
        doc["landmarks"][7]["predicted_x_px"] += 30.0
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("18 landmarks", "not a correction file"),
        ("nan", "not a correction file"),
        ("outside", "landmark 5 at .* lies outside the 200x240 image"),
        ("spacing", "pixel spacing 0.2 mm, but the corrections are at 0.1 mm"),
        ("other model", "made on another model \\(landmark 8 was predicted 30.0 px"),
    ],
)
def test_bad_corrections_are_one_line_errors_naming_the_file_and_write_nothing(tmp_path, base, how, message):
    _review_corrections(tmp_path / "scans", 3)
    bad = _break(tmp_path / "scans", how)
    with pytest.raises((ValueError, DataError)) as err:
        build.adapt(tmp_path / "scans", base, tmp_path / "out", predict)
    assert bad.name in str(err.value) and "\n" not in str(err.value)
    assert err.match(message)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_no_corrections_duplicates_unknown_method_and_an_existing_folder(tmp_path, base):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no corrections"):
        build.adapt(tmp_path / "empty", base, tmp_path / "out", predict)
    _review_corrections(tmp_path / "scans", 2)
    copy = tmp_path / "scans" / "copy"
    copy.mkdir()
    (copy / "x00.png").write_bytes((tmp_path / "scans" / "x00.png").read_bytes())
    (copy / "x00.png.corrected.json").write_text((tmp_path / "scans" / "x00.png.corrected.json").read_text())
    with pytest.raises(ValueError, match="duplicate correction"):
        build.adapt(tmp_path / "scans", base, tmp_path / "out", predict)
    with pytest.raises(KeyError, match="unknown adaptation method 'median'"):
        build.learn(sources.find(tmp_path / "scans" / "copy"), predict, method="median")
    with pytest.raises(FileExistsError, match="never overwrites"):
        build.adapt(tmp_path / "scans", base, base.parent, predict)
    assert (base.parent / "card.json").read_text().startswith('{"name": "base model"')


def test_an_interrupted_write_leaves_no_folder(tmp_path, base, monkeypatch):
    _review_corrections(tmp_path / "scans", 3)

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build.os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        build.adapt(tmp_path / "scans", base, tmp_path / "out", predict)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_predict_outputs_are_not_corrections_and_adapted_points_are_refused(tmp_path, base):
    for path in _images(tmp_path / "scans", 2):  # mahtnet predict --isbi-txt --out scans/: a prediction
        (path.with_suffix(".txt")).write_text("".join(f"{x:.0f},{y:.0f}\n" for x, y in _model_points(path)))
        path.with_suffix(".json").write_text(json.dumps({"landmarks": [], "model": {}}))
    with pytest.raises(FileNotFoundError, match="no corrections"):
        build.adapt(tmp_path / "scans", base, tmp_path / "out", predict, pixel_spacing_mm=0.1)
    _review_corrections(tmp_path / "review", 2)
    path = sorted((tmp_path / "review").glob("*.corrected.json"))[0]
    doc = json.loads(path.read_text())
    doc["predicted_by"] = {"model": {}, "decoding": "adapted"}
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="x00.png.corrected.json: corrected from an adapted model"):
        build.adapt(tmp_path / "review", base, tmp_path / "out", predict)
