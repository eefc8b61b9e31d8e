import math

import numpy as np
import pytest

from mahtnet.clinical import (
    MEASUREMENTS,
    THRESHOLDS,
    angle_deg,
    classification_accuracy,
    classify,
    measurements,
    signed_angle_deg,
    vector_angle_deg,
)

# Image 001, senior annotation (a plausible face to start hand-made sets from).
BASE = np.array(
    [
        [835, 996], [1473, 1029], [1289, 1279], [604, 1228], [1375, 1654], [1386, 2019], [1333, 2200],
        [1263, 2272], [1305, 2252], [694, 1805], [1460, 1870], [1450, 1864], [1588, 1753], [1569, 2013],
        [1514, 1620], [1382, 2310], [944, 1506], [1436, 1569], [664, 1340],
    ],
    dtype=np.float64,
)  # fmt: skip


def _dir(deg: float) -> np.ndarray:
    """Unit vector at ``deg`` measured clockwise on screen from +x (image coordinates, y down)."""
    return np.array([math.cos(math.radians(deg)), math.sin(math.radians(deg))])


def _set(**points) -> np.ndarray:
    pts = BASE.copy()
    names = {"S": 0, "N": 1, "Or": 2, "Po": 3, "A": 4, "B": 5, "Pog": 6, "Me": 7, "Gn": 8, "Go": 9}
    names |= {"L11": 10, "L12": 11, "PNS": 16, "ANS": 17}
    for name, xy in points.items():
        pts[names[name]] = xy
    return pts


def _sn_ab(sna: float, snb: float) -> np.ndarray:
    """S-N horizontal, A and B placed so that angle S-N-A = sna and S-N-B = snb."""
    n = np.array([1000.0, 1000.0])
    # The ray N->S points along 180 deg; rotating it anticlockwise on screen by t gives 180 - t.
    return _set(S=(0, 1000), N=n, A=n + 600 * _dir(180 - sna), B=n + 1000 * _dir(180 - snb))


def test_angle_helpers():
    assert angle_deg(np.array([0, 0]), np.array([1, 0]), np.array([0, 5])) == pytest.approx(90)
    assert vector_angle_deg(np.array([1, 0]), np.array([-1, 0])) == pytest.approx(180)
    assert signed_angle_deg(np.array([1, 0]), np.array([0, 1])) == pytest.approx(90)  # clockwise on screen
    assert signed_angle_deg(np.array([1, 0]), np.array([1, -1])) == pytest.approx(-45)
    u = np.array([[1, 0], [0, 2]])
    np.testing.assert_allclose(vector_angle_deg(u, np.array([[1, 1], [0, 3]])), [45, 0], atol=1e-12)


def test_sna_snb_anb_by_hand():
    m = measurements(_sn_ab(90, 85))
    assert m["SNA"].shape == (1,)
    assert m["SNA"][0] == pytest.approx(90)
    assert m["SNB"][0] == pytest.approx(85)
    assert m["ANB"][0] == pytest.approx(5)
    assert measurements(_sn_ab(78, 81))["ANB"][0] == pytest.approx(-3)  # signed: B ahead of A


def test_fma_is_sn_to_go_gn():
    go = np.array([700.0, 1800.0])
    right = _set(S=(0, 1000), N=(1000, 1000), Go=go, Gn=go + (0, 400))
    assert measurements(right)["FMA"][0] == pytest.approx(90)
    thirty = _set(S=(0, 1000), N=(1000, 1000), Go=go, Gn=go + 500 * _dir(30))
    assert measurements(thirty)["FMA"][0] == pytest.approx(30)


def test_fhi_ratio():
    pts = _set(S=(800, 1000), Go=(800, 1700), N=(1500, 1000), Me=(1500, 2000))
    assert measurements(pts)["FHI"][0] == pytest.approx(0.7)


def test_mw_signed_distance_in_mm():
    ahead = _set(L11=(1500, 1800), L12=(1530, 1840))  # upper incisor 50 px ahead-below
    behind = _set(L11=(1500, 1800), L12=(1470, 1840))
    np.testing.assert_allclose(measurements(np.stack([ahead, behind]), 0.1)["MW"], [5.0, -5.0])
    np.testing.assert_allclose(measurements(np.stack([ahead, behind]), [0.1, 0.2])["MW"], [5.0, -10.0])


def _odi_set(mp_deg: float, pp_deg: float) -> np.ndarray:
    """B->A vertical, mandibular plane rising backwards by mp_deg, FH horizontal, PP tilted by
    pp_deg (positive = ANS down)."""
    me, b, pns = np.array([1200.0, 2200.0]), np.array([1350.0, 2000.0]), np.array([700.0, 1500.0])
    return _set(
        Me=me,
        Go=me + 600 * _dir(180 + mp_deg),
        B=b,
        A=b + (0, -300),
        Po=(300, 1200),
        Or=(1100, 1200),
        PNS=pns,
        ANS=pns + 400 * _dir(pp_deg),
    )


def test_odi_by_hand_and_palatal_sign():
    # AB vs MP: angle between (0, -1) and the backwards-up mandibular plane = 90 - 20 = 70.
    assert measurements(_odi_set(20, 5))["ODI"][0] == pytest.approx(75)
    assert measurements(_odi_set(20, -5))["ODI"][0] == pytest.approx(65)  # ANS tipped up: negative


def _apdi_set(facial_tilt: float, ab_tilt: float, pp_deg: float) -> np.ndarray:
    """FH horizontal; N-Pog leaning forward by facial_tilt from vertical (facial angle 90 + tilt);
    A->B leaning forward by ab_tilt relative to N-Pog; PP tilted by pp_deg (ANS down positive)."""
    n, a, pns = np.array([1400.0, 1000.0]), np.array([1380.0, 1650.0]), np.array([900.0, 1500.0])
    return _set(
        Po=(300, 1200),
        Or=(1200, 1200),
        N=n,
        Pog=n + 1200 * _dir(90 - facial_tilt),
        A=a,
        B=a + 400 * _dir(90 - facial_tilt - ab_tilt),
        PNS=pns,
        ANS=pns + 450 * _dir(pp_deg),
    )


def test_apdi_by_hand_and_signs():
    assert measurements(_apdi_set(-3, 4, 2))["APDI"][0] == pytest.approx(87 + 4 + 2)  # B ahead: +
    assert measurements(_apdi_set(-3, -4, 2))["APDI"][0] == pytest.approx(87 - 4 + 2)  # B behind: -
    assert measurements(_apdi_set(2, -4, -3))["APDI"][0] == pytest.approx(92 - 4 - 3)


def _challenge_reference(p: np.ndarray) -> dict[str, float]:
    """Scalar re-statement of the challenge script (acos of normalised dot products, cross-product
    signs), used to cross-check the vectorised code."""

    def vec(i, j):
        return p[j] - p[i]

    def ang(u, v):
        c = (u @ v) / (math.hypot(*u) * math.hypot(*v))
        return math.degrees(math.acos(max(-1.0, min(1.0, c))))

    def cross(u, v):
        return u[0] * v[1] - u[1] * v[0]

    sna, snb = ang(vec(1, 0), vec(1, 4)), ang(vec(1, 0), vec(1, 5))
    pp = ang(vec(3, 2), vec(16, 17)) * (-1 if cross(vec(3, 2), vec(16, 17)) < 0 else 1)
    ab = ang(vec(1, 6), vec(4, 5)) * (-1 if cross(vec(1, 6), vec(4, 5)) > 0 else 1)
    mw = math.dist(p[10], p[11]) / 10 * (-1 if p[11][0] < p[10][0] else 1)
    return {
        "ANB": sna - snb,
        "SNB": snb,
        "SNA": sna,
        "ODI": ang(vec(7, 9), vec(5, 4)) + pp,
        "APDI": ang(vec(2, 3), vec(1, 6)) + ab + pp,
        "FHI": math.dist(p[0], p[9]) / math.dist(p[1], p[7]),
        "FMA": ang(vec(0, 1), vec(9, 8)),
        "MW": mw,
    }


def test_matches_challenge_script_on_perturbed_faces():
    rng = np.random.default_rng(0)
    sets = BASE + rng.normal(0, 40, size=(25, 19, 2))
    got = measurements(sets, 0.1)
    for i, p in enumerate(sets):
        ref = _challenge_reference(p)
        for name in MEASUREMENTS:
            assert got[name][i] == pytest.approx(ref[name], abs=1e-9), (i, name)


def test_vectorised_equals_per_image():
    rng = np.random.default_rng(1)
    sets = BASE + rng.normal(0, 30, size=(6, 19, 2))
    spacing = np.array([0.1, 0.1, 0.12, 0.1, 0.09, 0.1])
    batch = measurements(sets, spacing)
    for i in range(6):
        one = measurements(sets[i], spacing[i])
        for name in MEASUREMENTS:
            assert batch[name].shape == (6,)
            assert batch[name][i] == pytest.approx(one[name][0])


@pytest.mark.parametrize("name", sorted(THRESHOLDS))
def test_class_boundaries(name):
    lo, hi, below, above = THRESHOLDS[name]
    eps = 1e-3
    labels = classify({name: np.array([lo - eps, lo, (lo + hi) / 2, hi, hi + eps])})[name]
    assert labels.dtype.kind == "i"
    assert labels.tolist() == [below, 1, 1, 1, above]


def test_class_directions_match_paper():
    c = classify({"ANB": [7.0, 0.0], "SNB": [70.0, 82.0], "SNA": [86.0, 75.0], "ODI": [85.0, 60.0]})
    assert [c[k].tolist() for k in ("ANB", "SNB", "SNA", "ODI")] == [[2, 3], [2, 3], [2, 3], [2, 3]]
    c = classify({"APDI": [70.0, 90.0], "FHI": [0.8, 0.6], "FMA": [35.0, 20.0]})
    assert [c[k].tolist() for k in ("APDI", "FHI", "FMA")] == [[2, 3], [2, 3], [2, 3]]


def test_mw_classes():
    labels = classify({"MW": np.array([-0.1, 0.0, 1.0, 1.999, 2.0, 3.0, 4.5, 4.501])})["MW"]
    assert labels.tolist() == [3, 2, 3, 3, 1, 1, 1, 4]


def test_classify_rejects_unknown_names():
    with pytest.raises(KeyError, match="XYZ"):
        classify({"XYZ": np.zeros(2)})


@pytest.mark.parametrize("shape", [(3, 18, 2), (18, 2), (2, 20, 2)])
def test_wrong_landmark_count_names_it(shape):
    with pytest.raises(ValueError, match=f"got {shape[-2]}$"):
        measurements(np.zeros(shape))


@pytest.mark.parametrize("shape", [(19, 3), (19,), (2, 2, 19, 2)])
def test_wrong_shape(shape):
    with pytest.raises(ValueError, match="19, 2"):
        measurements(np.zeros(shape))


def test_non_finite_rejected():
    pts = BASE.copy()
    pts[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        measurements(pts)


def test_classification_accuracy_identical_and_moved():
    gt = np.stack([_sn_ab(90, 85)] * 4)  # SNB 85: C3 (prognathic mandible)
    acc = classification_accuracy(gt, gt, 0.1)
    assert set(acc) == {*MEASUREMENTS, "mean"}
    assert all(v == 100.0 for v in acc.values())
    pred = gt.copy()
    n = pred[0, 1]
    pred[0, 5] = n + 1000 * _dir(180 - 76.0)  # move B: SNB 76, C1
    acc = classification_accuracy(pred, gt, 0.1)
    assert acc["SNB"] == 75.0
    assert acc["SNA"] == 100.0
    assert acc["mean"] < 100.0
    assert acc["mean"] == pytest.approx(np.mean([acc[k] for k in MEASUREMENTS]))


def test_classification_accuracy_shape_mismatch():
    with pytest.raises(ValueError, match="differ"):
        classification_accuracy(np.stack([BASE] * 2), np.stack([BASE] * 3))


def test_population_ranges_on_isbi_training_senior(isbi_root):
    from mahtnet.data.isbi import load_landmarks

    pts = np.stack([load_landmarks(isbi_root, f"{i:03d}", "senior") for i in range(1, 151)])
    m = measurements(pts, 0.1)
    assert 75 < m["SNA"].mean() < 90
    assert 72 < m["SNB"].mean() < 88
    assert -2 < m["ANB"].mean() < 8
    assert 55 < m["ODI"].mean() < 90
    assert 70 < m["APDI"].mean() < 100
    assert 0.55 < m["FHI"].mean() < 0.8
    assert 20 < m["FMA"].mean() < 40
    assert 0 < np.median(m["MW"]) < 6  # overjet: upper incisor usually ahead of the lower one
    classes = classify(m)
    for name in MEASUREMENTS:
        assert (classes[name] == 1).sum() >= 15, name  # every normal class is well populated
