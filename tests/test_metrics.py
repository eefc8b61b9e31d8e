import numpy as np
import pytest

from mahtnet import metrics


def test_radial_errors_hand_computed():
    gt = np.zeros((2, 3, 2))
    pred = np.array([[[3, 4], [0, 0], [6, 8]], [[0, 20], [0, 25], [30, 40]]], dtype=float)
    e = metrics.radial_errors_mm(pred, gt, spacing_mm=0.1)
    np.testing.assert_allclose(e, [[0.5, 0.0, 1.0], [2.0, 2.5, 5.0]])
    assert metrics.mre(e) == pytest.approx(11.0 / 6)
    # SDR counts errors <= threshold: 0.5, 0, 1, 2 are <= 2 mm; 2.5 is <= 2.5 mm
    assert metrics.sdr(e, 2.0) == pytest.approx(400 / 6)
    assert metrics.sdr(e, 2.5) == pytest.approx(500 / 6)
    assert metrics.sdr(e, 4.0) == pytest.approx(500 / 6)


def test_per_image_spacing():
    gt = np.zeros((2, 1, 2))
    pred = np.array([[[10.0, 0]], [[10.0, 0]]])
    e = metrics.radial_errors_mm(pred, gt, spacing_mm=np.array([0.1, 0.5]))
    np.testing.assert_allclose(e, [[1.0], [5.0]])


def test_summary_matches_numpy_on_random_data():
    rng = np.random.default_rng(1)
    pred, gt = rng.normal(size=(7, 19, 2)) * 30, rng.normal(size=(7, 19, 2)) * 30
    e = metrics.radial_errors_mm(pred, gt, 0.1)
    direct = np.sqrt(((pred - gt) ** 2).sum(-1)) * 0.1
    s = metrics.summarize(e, [2.0, 2.5, 3.0, 4.0])
    assert s["mre_mm"] == pytest.approx(direct.mean())
    assert s["sd_mm"] == pytest.approx(direct.std())
    assert s["median_mm"] == pytest.approx(np.median(direct))
    assert s["sdr_2.5mm"] == pytest.approx((direct <= 2.5).mean() * 100)
    rows = metrics.per_landmark(e, [2.0], [f"l{i}" for i in range(19)])
    assert rows[3]["mre_mm"] == pytest.approx(direct[:, 3].mean())


def test_nan_predictions_rejected():
    with pytest.raises(ValueError, match="NaN"):
        metrics.radial_errors_mm(np.full((1, 2, 2), np.nan), np.zeros((1, 2, 2)), 0.1)
