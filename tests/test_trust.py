"""mahtnet.decoding.trust: the image verdict, landmark flags and the conformal bound."""

import math

import numpy as np
import pytest

from mahtnet.decoding import trust as tr
from mahtnet.decoding.reader import Readout

K = 19


def _signals(res=1.0, conf=0.9, shift=0.5, final_res=1.0):
    return {
        "coarse_confidence": np.full(K, conf),
        "argmax_residual_sd": np.full(K, res),
        "residual_sd": np.full(K, final_res),
        "shape_shift_mm": np.zeros(K),
        "refine_shift_mm": np.full(K, shift),
    }


def _model(**changes):
    base = dict(
        min_side_px=500, min_fov_mm=90.0, max_median_residual_sd=2.0, min_median_confidence=0.7,
        refuse_max_median_residual_sd=6.0, refuse_min_median_confidence=0.45, refuse_min_sharpness=0.05,
        flag_min_confidence=0.2, flag_max_refine_shift_mm=3.0, flag_max_residual_sd=4.0, coverage=0.9,
        scale_mm=tuple(np.linspace(0.5, 2.0, K)), bound_quantile=3.0, expected_quantile=1.0, fitted_on="test",
    )  # fmt: skip
    return tr.TrustModel(**(base | changes))


def test_fit_takes_the_training_range_with_a_margin_and_the_conformal_quantile():
    rng = np.random.default_rng(0)
    train = [
        _signals(res=r, conf=c)
        for r, c in zip(rng.uniform(0.5, 1.2, 50), rng.uniform(0.85, 1.0, 50), strict=True)
    ]
    val = [
        _signals(shift=s, final_res=r)
        for s, r in zip(rng.uniform(0, 2, 20), rng.uniform(0, 2, 20), strict=True)
    ]
    errors = rng.gamma(2.0, 0.5, size=(20, K))
    made = [_signals(res=r, conf=0.1) for r in (10.0, 14.0)]
    t = tr.fit(
        train, [(2400, 1935)] * 50, 0.1, val, rng.uniform(0.1, 1, (20, K)), errors, errors * 0.8,
        train_sharpness=[0.09, 0.12], blurred_sharpness=[0.01, 0.013], negative_signals=made,
    )  # fmt: skip
    worst_res = max(np.median(s["argmax_residual_sd"]) for s in train)
    worst_conf = min(np.median(s["coarse_confidence"]) for s in train)
    assert t.refuse_max_median_residual_sd == pytest.approx((worst_res + 10.0) / 2, abs=1e-3)
    assert t.refuse_min_median_confidence == pytest.approx((worst_conf + 0.1) / 2, abs=1e-3)
    assert t.refuse_min_sharpness == pytest.approx((0.09 + 0.013) / 2, abs=1e-4)
    assert t.max_median_residual_sd == pytest.approx(
        max(np.median(s["argmax_residual_sd"]) for s in train) * 1.5, abs=1e-3
    )
    assert t.min_median_confidence == pytest.approx(
        min(np.median(s["coarse_confidence"]) for s in train) * 0.9, abs=1e-3
    )
    assert t.min_side_px == 967 and t.min_fov_mm == pytest.approx(96.8, abs=0.1)
    _, bound = t.bounds()
    assert (errors <= bound).mean() >= 0.9  # in-sample: split conformal covers at least its level
    back = tr.TrustModel.from_dict(t.to_dict())
    assert back.bound_quantile == t.bound_quantile and len(back.scale_mm) == K


def test_an_ensemble_adds_its_members_spread_as_a_fourth_flag():
    rng = np.random.default_rng(1)
    train = [_signals() for _ in range(20)]
    val = [_signals(shift=s) | {"members_spread_mm": rng.uniform(0, 1, K)} for s in rng.uniform(0, 2, 30)]
    conf, errors = rng.uniform(0.1, 1, (30, K)), rng.gamma(2.0, 0.5, size=(30, K))
    kw = dict(train_sharpness=[0.1], blurred_sharpness=[0.01], negative_signals=[_signals(res=10, conf=0.1)])
    t = tr.fit(train, [(2400, 1935)] * 20, 0.1, val, conf, errors, errors, **kw)
    spread = np.stack([v["members_spread_mm"] for v in val])
    assert t.flag_max_spread_mm == pytest.approx(np.quantile(spread, 1 - 0.05 / 4))  # four signals
    assert t.flag_max_refine_shift_mm == pytest.approx(
        np.quantile(np.stack([v["refine_shift_mm"] for v in val]), 1 - 0.05 / 4)
    )
    single = tr.fit(train, [(2400, 1935)] * 20, 0.1, [_signals(shift=1.0)] * 30, conf, errors, errors, **kw)
    assert single.flag_max_spread_mm is None  # one network: three signals, as before
    sig = _signals() | {"members_spread_mm": np.zeros(K)}
    sig["members_spread_mm"][4] = t.flag_max_spread_mm + 0.1
    ok = np.full(K, 0.9)
    assert np.flatnonzero(t.flags(sig, ok)).tolist() == [4]
    assert not single.flags(sig, ok).any()  # a threshold the model does not have flags nothing
    assert tr.TrustModel.from_dict(t.to_dict()).flag_max_spread_mm == t.flag_max_spread_mm
    old = {k: v for k, v in t.to_dict().items() if k != "flag_max_spread_mm"}  # a card from before
    assert tr.TrustModel.from_dict(old).flag_max_spread_mm is None
    with pytest.raises(ValueError, match="finite number"):
        tr.TrustModel.from_dict(t.to_dict() | {"flag_max_spread_mm": float("inf")})


def test_conformal_quantile_is_the_ceil_rank():
    assert tr.conformal_quantile(np.arange(1, 10), 0.9) == 9  # ceil(10 * 0.9) = 9th smallest
    assert tr.conformal_quantile(np.arange(1, 100), 0.9) == 90


def test_image_checks_flags_and_bad_blocks():
    t = _model()
    assert t.too_small((8, 8), None).startswith("8x8 px: fewer than 500")
    assert "field of view of 60 mm" in t.too_small((600, 800), 0.1)
    assert t.too_small((2400, 1935), 0.1) is None
    assert t.fits(t.image_figures(_signals())) and not t.fits(t.image_figures(_signals(res=30)))
    assert not t.fits(t.image_figures(_signals(conf=0.1)))
    no_spacing = _signals() | {"argmax_residual_sd": np.full(K, np.nan)}
    assert math.isnan(t.image_figures(no_spacing)["median_residual_sd"]) and t.fits(
        t.image_figures(no_spacing)
    )
    sig = _signals()
    sig["refine_shift_mm"][3], sig["residual_sd"][5] = 5.0, 9.0
    conf = np.full(K, 0.8)
    conf[7] = 0.1
    assert np.flatnonzero(t.flags(sig, conf)).tolist() == [3, 5, 7]
    with pytest.raises(ValueError, match="lacks coverage"):
        tr.TrustModel.from_dict({k: v for k, v in t.to_dict().items() if k != "coverage"})
    with pytest.raises(ValueError, match="finite number"):
        tr.TrustModel.from_dict(t.to_dict() | {"bound_quantile": float("nan")})


def _fake_reader(upright):
    """A reader whose signals fit only for the orientation ``upright(pixels)`` says is upright."""

    def read(pixels, spacing):
        ok = upright(pixels)
        pts = np.tile([[10.0, 20.0]], (K, 1))
        sig = {k: v[None] for k, v in _signals(res=1.0 if ok else 40.0, conf=0.9 if ok else 0.05).items()}
        return Readout({"coarse": pts[None].copy()}, np.full((1, K), 0.9), ["coarse"], None, sig)

    return read


def test_verdicts_mirrored_rotated_not_a_cephalogram_too_small_and_force():
    t = _model()
    image = np.random.default_rng(1).integers(0, 200, (2400, 1935)).astype(np.uint8)  # sharp
    image[0, 0] = 255  # the marker sits top-left when upright
    ok = tr.read_checked(_fake_reader(lambda p: p[0, 0] == 255), t, image, 0.1)
    assert ok.verdict == "ok" and not ok.refused and ok.readout.final[0][0].tolist() == [10.0, 20.0]
    mirrored = tr.read_checked(
        _fake_reader(lambda p: p[0, -1] == 255 and p.shape == image.shape), t, image, 0.1
    )
    assert mirrored.verdict == "mirrored" and not mirrored.refused
    assert mirrored.readout.final[0][0].tolist() == [1935 - 1 - 10.0, 20.0]  # mapped back to the image
    rotated = tr.read_checked(
        _fake_reader(lambda p: p.shape == (1935, 2400) and p[-1, 0] == 255), t, image, 0.1
    )
    assert rotated.verdict == "rotated" and rotated.refused and rotated.readout is None
    assert (
        "turned 270 degrees counter-clockwise" in rotated.reason
    )  # the marker went from top-left to bottom-left
    nothing = tr.read_checked(_fake_reader(lambda p: False), t, image, 0.1)
    assert nothing.verdict == "not_a_lateral_cephalogram" and "limit 6.0" in nothing.reason
    forced = tr.read_checked(_fake_reader(lambda p: False), t, image, 0.1, force=True)
    assert forced.forced and forced.readout is not None
    small = tr.read_checked(_fake_reader(lambda p: True), t, np.zeros((8, 8), np.uint8), None)
    assert small.verdict == "too_small" and small.readout is None


def _banded_reader(upright, res=4.0, conf=0.6):
    """Upright (by ``upright(pixels)``): figures between the usual and the refusal limits of
    :func:`_model`; any other orientation: nothing fits."""

    def read(pixels, spacing):
        ok = upright(pixels)
        pts = np.tile([[10.0, 20.0]], (K, 1))
        sig = {k: v[None] for k, v in _signals(res=res if ok else 40.0, conf=conf if ok else 0.05).items()}
        return Readout({"coarse": pts[None].copy()}, np.full((1, K), 0.9), ["coarse"], None, sig)

    return read


def test_unusual_is_read_with_every_landmark_to_check_and_blur_is_refused():
    """Between the training range and the refusal limits: ``unusual``, read (as it is or
    mirrored back), every landmark on the check-first list; a blurred image with the same
    figures is refused as too blurred."""
    t = _model()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 200, (2400, 1935)).astype(np.uint8)
    image[0, 0] = 255
    assert tr.sharpness(image) > 0.5 and tr.sharpness(np.full((600, 500), 7, np.uint8)) < 1e-3
    u = tr.read_checked(_banded_reader(lambda p: p[0, 0] == 255), t, image, 0.1)
    assert u.verdict == "unusual" and u.unusual and not u.refused and u.readout is not None
    assert "check every landmark" in u.reason and "usual from 0.70" in u.reason
    sig = {k: v[0] for k, v in u.readout.signals.items()}
    assert (
        t.check_first(True, sig, np.full(K, 0.9)).all()
        and not t.check_first(False, sig, np.full(K, 0.9)).any()
    )
    m = tr.read_checked(_banded_reader(lambda p: p[0, -1] == 255 and p.shape == image.shape), t, image, 0.1)
    assert m.verdict == "mirrored" and m.unusual and "check every landmark" in m.reason
    assert m.readout.final[0][0].tolist() == [1935 - 1 - 10.0, 20.0]
    blurred = np.full((2400, 1935), 100, np.uint8)
    blurred[0, 0] = 255
    b = tr.read_checked(_banded_reader(lambda p: p[0, 0] == 255), t, blurred, 0.1)
    assert b.verdict == "not_a_lateral_cephalogram" and b.reason.startswith("too blurred to read")
    far = tr.read_checked(_banded_reader(lambda p: p[0, 0] == 255, res=8.0), t, image, 0.1)
    assert far.verdict == "not_a_lateral_cephalogram" and "limit 6.0" in far.reason
