"""The released model: ``mahtnet predict`` without ``--model`` uses it (a recipe: its card names
which file does what), its card matches its files."""

import argparse
import json

import pytest

import mahtnet.release as release
from mahtnet.cli import main, reader_spec
from mahtnet.decoding.recipe import ReaderSpec
from mahtnet.models.card import sha256


def _args(**kw):
    """The model options of `mahtnet predict`, as parsed."""
    options = {"model": None, "shape_prior": None, "refiner": None, "calibration": None, "tta": False}
    return argparse.Namespace(**(options | {"pixel_spacing": None, "device": "cpu", "threads": 0} | kw))


def test_without_a_release_the_error_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(release, "RELEASE_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="no released model.*maht_net.onnx.*give --model"):
        reader_spec(_args())
    given = reader_spec(_args(model=tmp_path / "mine.pt"))  # an explicit model: the release is not looked at
    assert given.model == tmp_path / "mine.pt" and given.refiner is None and given.card is None


def test_the_release_fills_in_what_the_command_does_not_name(tmp_path, monkeypatch):
    monkeypatch.setattr(release, "RELEASE_DIR", tmp_path)
    for name in release.FILES:
        (tmp_path / name).write_bytes(b"x")
    files = {name: {"sha256": sha256(tmp_path / name), "bytes": 1} for name in release.FILES}
    (tmp_path / "card.json").write_text(json.dumps({"reader": release.READER, "files": files}))
    spec = reader_spec(_args(refiner=tmp_path / "my_refiner.pt", tta=True))
    assert spec.model == tmp_path / "maht_net.onnx" and spec.shape_prior == tmp_path / "shape_prior.npz"
    assert spec.refiner == tmp_path / "my_refiner.pt" and spec.tta_shifts_px and spec.device == "cpu"
    assert ReaderSpec.release().refiner == tmp_path / "refiner.onnx"


shipped = pytest.mark.skipif(not release.CARD.is_file(), reason="no released model in this checkout")


@shipped
def test_the_card_lists_the_shipped_files():
    card = json.loads(release.CARD.read_text())
    for name in release.FILES:
        assert sha256(release.RELEASE_DIR / name) == card["files"][name]["sha256"], name
    assert card["reader"] == release.READER  # the release is a recipe
    assert ReaderSpec.release().describe()["name"] == card["name"]
    assert {"test1", "test2"} <= set(card["scores"]) and "not a medical device" in card["intended_use"]


@shipped
def test_predict_an_isbi_test2_image_without_model(isbi_root, tmp_path, capsys):
    image = isbi_root / "RawImage" / "Test2Data" / "301.jpg"
    out = tmp_path / "out"
    assert main(["predict", str(image), "--pixel-spacing", "0.1", "--out", str(out), "--no-overlay"]) == 0
    doc = json.loads((out / "301.json").read_text())
    assert doc["decoding"] == "refined" and len(doc["landmarks"]) == 19
    assert doc["model"]["sha256"] == json.loads(release.CARD.read_text())["files"]["maht_net.onnx"]["sha256"]
    assert "synthetic" not in capsys.readouterr().err


@shipped
def test_the_release_is_the_ensemble_chosen_on_validation():
    """The card's Test1 / Test2 figures (read through mahtnet predict's code, ONNX) are the points
    ensemble's that docs/ensemble_choice.json chose on the validation images and read once."""
    card = json.loads(release.CARD.read_text())
    choice = json.loads((release.RELEASE_DIR.parents[2] / "docs/ensemble_choice.json").read_text())
    assert choice["validation"]["choice"]["chosen"] == "points"
    assert [m["seed"] for m in card["members"]] == list(release.MEMBER_SEEDS)
    assert {m["split_seed"] for m in card["members"]} == {card["training"]["split_seed"]}
    for s in ("test1", "test2"):
        for gt in ("mean", "official"):
            ours = card["scores"][s][gt]["mre_mm"]
            assert ours == pytest.approx(choice["sets"][s]["scores"][gt]["points"]["mre_mm"], abs=1e-3), (
                s,
                gt,
            )
    assert len(ReaderSpec.release().members) == len(release.MEMBERS) == 2
