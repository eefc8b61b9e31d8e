"""mahtnet.decoding.conventions: per-landmark conventions learned from corrections."""

import numpy as np
import pytest

from mahtnet.decoding import conventions as cv
from mahtnet.landmarks import NUM_LANDMARKS

K = NUM_LANDMARKS


def _configs(n, rng, tilt_deg=0.0):
    """``n`` skull-like configurations (px): one layout, turned by up to ``tilt_deg``, scaled, shifted."""
    base = rng.uniform(200, 1800, size=(K, 2))
    base[cv.SELLA], base[cv.NASION] = (800, 1000), (1400, 1000)
    out = []
    for _ in range(n):
        a = np.deg2rad(rng.uniform(-tilt_deg, tilt_deg))
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        out.append((base - 1000) @ rot.T * rng.uniform(0.9, 1.1) + 1000 + rng.uniform(-50, 50, 2))
    return np.array(out)


def test_mean_recovers_a_constant_offset_in_mm():
    rng = np.random.default_rng(0)
    pred = _configs(5, rng)
    offset_mm = rng.normal(0, 2, size=(K, 2))
    truth = pred + offset_mm / 0.1
    conv = cv.fit("mean", pred, truth, 0.1)
    np.testing.assert_allclose(conv.offset, offset_mm, atol=1e-9)
    np.testing.assert_allclose(conv.apply(pred, 0.1), truth, atol=1e-9)
    assert conv.k == 5 and np.allclose(conv.spread, 0) and np.all(conv.weight == 1)


def test_frame_offset_turns_with_the_head_where_image_axes_do_not():
    rng = np.random.default_rng(1)
    pred = _configs(12, rng, tilt_deg=20)
    in_frame = rng.normal(0, 0.02, size=(K, 2))  # sella-nasion lengths
    rot, length = cv._frame(pred)
    truth = pred + np.einsum("nij,kj->nki", rot, in_frame) * length[:, None, None]
    train, test = slice(0, 8), slice(8, 12)
    frame = cv.fit("frame-mean", pred[train], truth[train], 0.1)
    np.testing.assert_allclose(frame.offset, in_frame, atol=1e-9)
    np.testing.assert_allclose(frame.apply(pred[test], 0.1), truth[test], atol=1e-6)
    axes = cv.fit("mean", pred[train], truth[train], 0.1)
    assert np.abs(axes.apply(pred[test], 0.1) - truth[test]).max() > 1.0  # px: misses the turn


def test_shrinkage_keeps_a_clear_convention_and_drops_noise():
    rng = np.random.default_rng(2)
    pred = _configs(10, rng)
    offset = np.zeros((K, 2))
    offset[3] = (40.0, 0.0)  # porion: a 4 mm convention
    truth = pred + offset + rng.normal(0, 5.0, size=(10, K, 2))  # 0.5 mm noise everywhere
    conv = cv.fit("shrunk", pred, truth, 0.1)
    assert conv.weight[3] > 0.95
    assert np.median(conv.weight) < 0.5  # no convention: mostly shrunk away
    assert np.linalg.norm(conv.offset, axis=1).sum() < np.linalg.norm(conv.mean, axis=1).sum()
    one = cv.fit("shrunk", pred[:1], truth[:1], 0.1)  # one image, no prior: no convention claimed
    assert np.all(one.offset == 0)
    prior = np.full(K, 0.25)  # mm^2: the base model's own scatter
    one = cv.fit("shrunk", pred[:1], truth[:1], 0.1, prior_var=prior)
    assert one.weight[3] > 0.9 and one.weight.min() >= 0


def test_leave_one_out_and_choice():
    rng = np.random.default_rng(3)
    pred = _configs(6, rng)
    truth = pred + rng.normal(0, 30.0, size=(K, 2)) + rng.normal(0, 3.0, size=(6, K, 2))
    loo = cv.leave_one_out("mean", pred, truth, 0.1)
    assert loo["k"] == 6 and loo["mre_mm"] < loo["unadapted_mre_mm"]
    method, scores = cv.choose(pred, truth, 0.1)
    assert method in cv.METHODS and set(scores) == set(cv.METHODS)
    assert scores[method]["mre_mm"] == min(s["mre_mm"] for s in scores.values())
    assert cv.choose(pred[:2], truth[:2], 0.1) == ("shrunk", {})
    with pytest.raises(ValueError, match="at least 2"):
        cv.leave_one_out("mean", pred[:1], truth[:1], 0.1)
    with pytest.raises(KeyError, match="unknown adaptation method 'median'; valid: mean"):
        cv.fit("median", pred, truth, 0.1)


def test_card_figures_round_trip_and_bad_figures_are_refused():
    rng = np.random.default_rng(4)
    pred = _configs(4, rng)
    conv = cv.fit("frame-shrunk", pred, pred + rng.normal(0, 10, size=(4, K, 2)), 0.1)
    doc = conv.to_dict()
    back = cv.Convention.from_dict(doc)
    np.testing.assert_allclose(back.offset, conv.offset, atol=1e-6)
    assert back.method == "frame-shrunk" and back.frame and doc["unit"] == "sella-nasion lengths"
    doc["landmarks"][0]["offset"] = [float("nan"), 0.0]
    with pytest.raises(ValueError, match="not a finite number"):
        cv.Convention.from_dict(doc)
    doc["landmarks"] = doc["landmarks"][:18]
    with pytest.raises(ValueError, match="19 ISBI landmarks"):
        cv.Convention.from_dict(doc)
