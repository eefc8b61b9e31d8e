import json

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from mahtnet.analysis import stats
from mahtnet.landmarks import LANDMARK_NAMES

K = 19
THRESHOLDS = (2.0, 2.5, 3.0, 4.0)


def errors(rng, n, k=K, mean=1.8):
    """Gamma-distributed radial errors (mm) with the given population mean."""
    return rng.gamma(shape=4.0, scale=mean / 4.0, size=(n, k))


def test_known_effect_detected():
    rng = np.random.default_rng(0)
    a = errors(rng, 100)
    b = np.abs(0.8 * a + rng.normal(0, 0.05, a.shape))
    res = stats.compare_paired(a, b, n_boot=2000)
    assert res["images"] == 100 and res["difference"] == "b - a"
    assert res["wilcoxon"]["p_value"] < 1e-6 and res["ttest"]["p_value"] < 1e-6
    assert res["mre_diff"] == pytest.approx(-0.2 * res["mre_a"], rel=0.05)
    assert res["relative_mre_change"] == pytest.approx(-0.2, abs=0.01)
    lo, hi = res["bootstrap"]["mre_diff"]
    assert lo < res["mre_diff"] < hi < 0  # excludes 0
    assert lo < -0.2 * 1.8 < hi  # contains the population difference
    # B lower on every image -> rank-biserial -1 (sign convention: b - a)
    assert res["effect_size"]["rank_biserial"] == pytest.approx(-1.0)
    assert res["effect_size"]["cohens_dz"] < -2
    assert all(v > 0 for v in res["sdr_diff"].values())
    lo, hi = res["bootstrap"]["relative_mre_change"]
    assert lo < -0.2 < hi
    assert all(row["reject"] and row["mre_diff"] < 0 for row in res["per_landmark"])


def test_type_one_error_calibrated():
    rng = np.random.default_rng(1)
    p = [
        stats.signed_rank_test(stats.paired_differences(errors(rng, 40), errors(rng, 40)))["p_value"]
        for _ in range(200)
    ]
    assert 0.01 <= np.mean(np.array(p) < 0.05) <= 0.10


def test_compare_paired_zero_effect_ci_contains_zero():
    # exactly symmetric zero effect: B on the second half of the images is A on the first half and vice versa
    rng = np.random.default_rng(2)
    x, y = errors(rng, 30), errors(rng, 30)
    a, b = np.vstack([x, y]), np.vstack([y, x])
    res = stats.compare_paired(a, b, n_boot=2000)
    assert res["mre_diff"] == pytest.approx(0, abs=1e-12) and res["wilcoxon"]["p_value"] > 0.9
    assert res["effect_size"]["rank_biserial"] == pytest.approx(0)
    lo, hi = res["bootstrap"]["mre_diff"]
    assert lo < 0 < hi
    for lo, hi in res["bootstrap"]["sdr_diff"].values():
        assert lo <= 0 <= hi


def test_bootstrap_ci_coverage():
    rng = np.random.default_rng(3)
    hits = []
    for i in range(100):
        d = stats.paired_differences(errors(rng, 30), errors(rng, 30))
        lo, hi = stats.bootstrap_ci(d, n_boot=500, seed=i)
        hits.append(lo <= 0 <= hi)
    assert 0.85 <= np.mean(hits) <= 1.0


def test_holm_across_landmarks():
    rng = np.random.default_rng(4)
    a = errors(rng, 60)
    b = errors(rng, 60)
    effect = [0, 7, 13]
    b[:, effect] = 0.6 * a[:, effect]
    res = stats.compare_paired(a, b, n_boot=0, landmark_names=LANDMARK_NAMES)
    assert res["bootstrap"] is None
    rows = res["per_landmark"]
    assert [r["landmark"] for r in rows] == list(LANDMARK_NAMES)
    rejected = {i for i, r in enumerate(rows) if r["reject"]}
    assert set(effect) <= rejected and len(rejected - set(effect)) <= 1
    raw = np.array([r["p_value"] for r in rows])
    holm = np.array([r["p_holm"] for r in rows])
    assert np.all(holm >= raw)
    rej, expected, _, _ = multipletests(raw, alpha=0.05, method="holm")
    np.testing.assert_allclose(holm, expected)
    assert [r["reject"] for r in rows] == rej.tolist()
    # per-landmark raw p is the plain scipy Wilcoxon of that landmark
    for k in (0, 3):
        assert raw[k] == pytest.approx(sps.wilcoxon(b[:, k], a[:, k]).pvalue)


def test_agrees_with_direct_numpy():
    rng = np.random.default_rng(5)
    n, n_boot, seed = 30, 300, 7
    a, b = errors(rng, n), errors(rng, n, mean=2.0)
    res = stats.compare_paired(a, b, thresholds_mm=THRESHOLDS, n_boot=n_boot, seed=seed)
    ia, ib = a.mean(1), b.mean(1)
    d = ib - ia
    assert res["mre_a"] == pytest.approx(a.mean()) and res["mre_b"] == pytest.approx(b.mean())
    assert res["mre_diff"] == pytest.approx(b.mean() - a.mean())
    assert res["relative_mre_change"] == pytest.approx(b.mean() / a.mean() - 1)
    np.testing.assert_allclose(stats.paired_differences(a, b), d)
    for t in THRESHOLDS:
        key = f"sdr_{t:g}mm"
        assert res["sdr_a"][key] == pytest.approx(100 * np.mean(a <= t))
        assert res["sdr_diff"][key] == pytest.approx(100 * (np.mean(b <= t) - np.mean(a <= t)))
    # image-level tests and effect sizes
    assert res["wilcoxon"]["p_value"] == pytest.approx(sps.wilcoxon(ib, ia).pvalue)
    assert res["wilcoxon"]["statistic"] == pytest.approx(sps.wilcoxon(ib, ia).statistic)
    assert res["ttest"]["p_value"] == pytest.approx(sps.ttest_rel(ib, ia).pvalue)
    assert res["effect_size"]["cohens_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
    r_plus = sps.wilcoxon(d, alternative="greater").statistic
    total = n * (n + 1) / 2
    assert res["effect_size"]["rank_biserial"] == pytest.approx((2 * r_plus - total) / total)
    # bootstrap: same image resample for both models, SDR over all landmarks of the resample
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    ea, eb = a[idx], b[idx]  # (n_boot, n, K)
    q = [0.025, 0.975]
    mre_boot = eb.mean((1, 2)) - ea.mean((1, 2))
    np.testing.assert_allclose(res["bootstrap"]["mre_diff"], np.quantile(mre_boot, q))
    for t in THRESHOLDS:
        sdr_boot = 100 * ((eb <= t).mean((1, 2)) - (ea <= t).mean((1, 2)))
        np.testing.assert_allclose(res["bootstrap"]["sdr_diff"][f"sdr_{t:g}mm"], np.quantile(sdr_boot, q))
    rel = eb.mean((1, 2)) / ea.mean((1, 2)) - 1
    np.testing.assert_allclose(res["bootstrap"]["relative_mre_change"], np.quantile(rel, q))
    row = res["per_landmark"][4]
    assert row["landmark"] == "L5"
    assert row["mre_diff"] == pytest.approx(b[:, 4].mean() - a[:, 4].mean())
    json.dumps(res, allow_nan=False)


def test_identical_inputs():
    a = errors(np.random.default_rng(6), 20)
    res = stats.compare_paired(a, a.copy(), n_boot=200)
    assert res["wilcoxon"] == {"statistic": 0.0, "p_value": 1.0, "n_nonzero": 0}
    assert res["ttest"] == {"statistic": 0.0, "p_value": 1.0}
    assert res["effect_size"] == {"rank_biserial": 0.0, "cohens_dz": 0.0}
    assert res["mre_diff"] == 0.0 and res["bootstrap"]["mre_diff"] == [0.0, 0.0]
    assert all(r["p_value"] == 1.0 and r["p_holm"] == 1.0 and not r["reject"] for r in res["per_landmark"])
    json.dumps(res, allow_nan=False)


def test_constant_shift_and_zero_reference_are_json_ready():
    a = errors(np.random.default_rng(7), 20)
    res = stats.compare_paired(a, a + 0.1, n_boot=100)  # per-image differences equal up to rounding
    assert res["effect_size"]["cohens_dz"] is None  # sd of differences is 0
    assert res["ttest"] == {"statistic": None, "p_value": None}
    assert res["wilcoxon"]["p_value"] < 0.001
    json.dumps(res, allow_nan=False)
    res = stats.compare_paired(np.zeros((5, 3)), np.ones((5, 3)), n_boot=100)
    assert res["relative_mre_change"] is None and res["bootstrap"]["relative_mre_change"] is None
    json.dumps(res, allow_nan=False)


@pytest.mark.parametrize(
    "a, b, match",
    [
        (np.ones((5, 19)), np.ones((5, 18)), r"\(5, 19\).*\(5, 18\)"),
        (np.ones(5), np.ones(5), "must both be"),
        (np.ones((1, 19)), np.ones((1, 19)), "at least 2"),
        (np.ones((5, 19)), np.full((5, 19), np.nan), "errors_b contains NaN"),
        (np.full((5, 19), np.inf), np.ones((5, 19)), "errors_a contains NaN or inf"),
        (-np.ones((5, 19)), np.ones((5, 19)), "negative"),
    ],
)
def test_invalid_inputs(a, b, match):
    with pytest.raises(ValueError, match=match):
        stats.compare_paired(a, b, n_boot=10)


def test_landmark_names_length_checked():
    with pytest.raises(ValueError, match="landmark_names"):
        stats.compare_paired(np.ones((5, 3)), np.ones((5, 3)), landmark_names=["x"])


def test_compare_many():
    rng = np.random.default_rng(8)
    base = errors(rng, 40)
    models = {"unet": base, "mahtnet": 0.8 * base, "same": errors(rng, 40)}
    out = stats.compare_many(models, reference="unet", n_boot=100, alpha=0.05)
    assert list(out) == ["mahtnet", "same"]
    assert out["mahtnet"]["reference"] == "unet" and out["mahtnet"]["variant"] == "mahtnet"
    direct = stats.compare_paired(base, 0.8 * base, n_boot=100)
    assert out["mahtnet"]["mre_diff"] == direct["mre_diff"]
    assert out["mahtnet"]["bootstrap"] == direct["bootstrap"]
    p = [out[m]["wilcoxon"]["p_value"] for m in out]
    rej, holm, _, _ = multipletests(p, alpha=0.05, method="holm")
    assert [out[m]["wilcoxon"]["p_holm_variants"] for m in out] == pytest.approx(holm)
    assert [out[m]["wilcoxon"]["reject_variants"] for m in out] == rej.tolist()
    assert out["mahtnet"]["wilcoxon"]["reject_variants"]
    json.dumps(out, allow_nan=False)
    assert (
        "p_holm_variants" not in stats.compare_many(models, "unet", holm=False, n_boot=0)["same"]["wilcoxon"]
    )
    with pytest.raises(ValueError, match="reference"):
        stats.compare_many(models, reference="missing")


def test_mean_sd_over_runs():
    assert stats.mean_sd([1.0, 2.0, 3.0]) == {"mean": 2.0, "sd": 1.0}  # ddof=1
    assert stats.mean_sd([1.5]) == {"mean": 1.5, "sd": 0.0}  # one run: no spread, not NaN
    for bad in ([], [1.0, float("nan")], [[1.0, 2.0]]):
        with pytest.raises(ValueError, match="finite"):
            stats.mean_sd(bad)
