"""Calibrated confidence: the isotonic confidence -> expected-error map, reliability, and
`mahtnet predict --calibration`."""

import json

import cv2
import numpy as np
import pytest
from test_predict import checkpoint, xray  # noqa: F401  (module fixture)

from mahtnet.analysis.calibration import (
    MIN_IMAGES_PER_LANDMARK,
    cross_validated,
    fit_calibration,
    flagged,
    reliability,
)
from mahtnet.cli import main
from mahtnet.decoding import TorchBackend
from mahtnet.decoding.calibration import CalibrationError, ErrorCalibration
from mahtnet.io import write_json

MODEL = {"architecture": "unet", "input_size": [64, 48]}


def test_the_map_is_monotone_and_follows_the_data():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 2000)
    err = 3.0 - 2.0 * conf + rng.normal(0, 0.3, conf.size)  # higher confidence, smaller error
    cal = ErrorCalibration.fit(conf, err, MODEL)
    grid = np.linspace(-0.5, 1.5, 101)
    expected = cal.expected_error(grid)
    assert np.all(np.diff(expected) <= 1e-12)  # non-increasing, flat beyond the data
    np.testing.assert_allclose(cal.expected_error(np.array([0.25, 0.75])), [2.5, 1.5], atol=0.1)
    tied = ErrorCalibration.fit(np.array([0.5, 0.5, 0.9]), np.array([1.0, 3.0, 0.5]), MODEL)
    assert tied.expected_error(np.array([0.5]))[0] == pytest.approx(2.0)  # ties: their mean
    with pytest.raises(ValueError, match="finite"):
        ErrorCalibration.fit(np.array([0.1, np.nan]), np.array([1.0, 2.0]), MODEL)


def test_reliability_and_flags():
    observed = np.linspace(0.5, 5.0, 100)
    assert reliability(observed, observed)["calibration_error_mm"] == pytest.approx(0.0)
    assert reliability(observed + 0.3, observed)["calibration_error_mm"] == pytest.approx(0.3)
    f = flagged(np.array([0.1, 0.9, 0.95]), np.array([6.0, 1.0, 2.0]), 0.4)
    assert f["share"] == pytest.approx(1 / 3) and (f["mre_flagged_mm"], f["mre_other_mm"]) == (6.0, 1.5)


def test_predict_reports_the_expected_error_and_refuses_another_models_map(checkpoint, tmp_path):  # noqa: F811
    card = TorchBackend(checkpoint, "cpu").card.to_dict()
    model = {k: card[k] for k in ("architecture", "input_size", "landmark_names", "training_data")}
    cal = ErrorCalibration.fit(np.array([0.0, 0.2, 1.0]), np.array([4.0, 2.0, 1.0]), model)
    write_json(tmp_path / "cal.json", cal.to_dict())
    cv2.imwrite(str(tmp_path / "a.png"), xray(1))
    out = tmp_path / "out"
    args = ["predict", str(tmp_path / "a.png"), "--model", str(checkpoint), "--out", str(out), "--no-overlay"]
    assert main([*args, "--calibration", str(tmp_path / "cal.json")]) == 0
    rows = json.loads((out / "a.json").read_text())["landmarks"]
    for r in rows:
        assert r["expected_error_mm"] == pytest.approx(cal.expected_error(np.array([r["confidence"]]))[0])
    assert "expected_error_mm" in (out / "landmarks.csv").read_text().splitlines()[0]
    other = ErrorCalibration.fit(
        np.array([0.0, 1.0]), np.array([2.0, 1.0]), model | {"input_size": [320, 256]}
    )
    write_json(tmp_path / "other.json", other.to_dict())
    with pytest.raises(CalibrationError, match=r"other.json.*input_size"):
        main([*args, "--calibration", str(tmp_path / "other.json"), "--debug"])
    refined = ErrorCalibration.fit(
        np.array([0.0, 1.0]), np.array([2.0, 1.0]), model | {"decoding": "refined"}
    )
    write_json(tmp_path / "refined.json", refined.to_dict())
    with pytest.raises(
        ValueError, match=r"refined.json: fitted on refined landmarks, but this run emits arg-max"
    ):
        main([*args, "--calibration", str(tmp_path / "refined.json"), "--debug"])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="bad.json"):
        ErrorCalibration.load(tmp_path / "bad.json")


def test_per_landmark_maps_where_the_data_support_them(tmp_path):
    rng = np.random.default_rng(1)
    n = 2 * MIN_IMAGES_PER_LANDMARK  # the cross-validation folds too fit per landmark
    conf = rng.uniform(0, 1, (n, 3))
    err = np.array([1.0, 3.0, 5.0]) * (1.5 - conf) + rng.normal(0, 0.05, (n, 3))  # landmark-specific
    pooled = fit_calibration(conf[: MIN_IMAGES_PER_LANDMARK - 1], err[: MIN_IMAGES_PER_LANDMARK - 1], MODEL)
    assert pooled.per_landmark is None  # too few images: one map
    cal = fit_calibration(conf, err, MODEL)
    assert cal.per_landmark is not None and len(cal.per_landmark) == 3
    at = np.full((1, 3), 0.5)
    np.testing.assert_allclose(cal.expected_error(at)[0], [1.0, 3.0, 5.0], atol=0.3)
    write_json(tmp_path / "c.json", cal.to_dict())
    again = ErrorCalibration.load(tmp_path / "c.json")
    np.testing.assert_array_equal(again.expected_error(conf), cal.expected_error(conf))
    with pytest.raises(CalibrationError, match="3"):
        cal.expected_error(np.zeros((1, 2)))
    # cross-validated on the same data: the maps beat a constant guess; pure noise does not
    cv = cross_validated(conf, err)
    assert cv["folds"] == 5 and cv["expected_error_mae_mm"] < 0.5 * cv["constant_guess_mae_mm"]
    noise = cross_validated(conf, rng.normal(2.0, 0.5, (n, 3)))
    assert noise["expected_error_mae_mm"] > 0.9 * noise["constant_guess_mae_mm"]
