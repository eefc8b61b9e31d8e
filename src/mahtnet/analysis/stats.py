"""Paired statistical comparison of two landmark-detection models on the same test images.

Pure functions on radial-error arrays ``(N, K)`` in mm (N images, K landmarks) of model A (reference,
e.g. the U-Net baseline) and model B (e.g. MAHT-Net), same images in the same order.

Conventions
-----------
* Every difference is ``B - A``. For MRE a negative difference means B has *lower* error (better);
  for SDR a positive difference (percentage points) means B detects more landmarks (better).
* The unit of pairing and of resampling is the IMAGE: the image-level tests use the per-image MRE
  (mean over the K landmarks), since landmarks of one image are not independent.
* Wilcoxon signed-rank: ``scipy.stats.wilcoxon`` on the per-image differences, two-sided,
  ``zero_method="wilcox"`` (zero differences are dropped first), scipy's ``method="auto"``
  (exact null distribution for small samples, normal approximation above 50 non-zero differences);
  ``statistic`` is scipy's ``min(R+, R-)``.
* Rank-biserial (matched pairs): ``r = (R+ - R-) / (R+ + R-)`` over the ranks of the non-zero
  ``|B - A|``; ``r = -1`` when B is lower on every image, ``+1`` when higher. Cohen's
  ``d_z = mean(d) / sd(d, ddof=1)`` of the per-image differences ``d`` (same sign).
* Bootstrap: percentile CI at level ``1 - alpha``, resampling images with replacement, the same
  resample for both models, ``np.random.default_rng(seed)``; MRE / SDR of a resample are over all
  landmarks of the resampled images.

Degenerate cases: all differences zero -> Wilcoxon and t-test report ``statistic 0.0, p_value 1.0``
and the effect sizes are ``0.0`` (no evidence of a difference, not an error). Values that are
undefined (paired t and ``d_z`` when every image differs by the same non-zero amount, relative
change when MRE A is 0) are ``None``, so results are JSON-ready (``allow_nan=False``). Fewer than
:data:`MIN_IMAGES` images, mismatched shapes, non-2-D input, NaN/inf or negative errors raise
``ValueError``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from mahtnet import metrics

MIN_IMAGES = 2


def _f(x) -> float | None:
    """Plain float, or None where NaN/inf."""
    x = float(x)
    return x if np.isfinite(x) else None


def mean_sd(values: Sequence[float]) -> dict[str, float]:
    """``{"mean", "sd"}`` of a figure over runs (seeds, folds): the SD with ``ddof=1``, 0.0 for
    one run (no spread measured). No values, NaN or inf raise ``ValueError``."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0 or not np.all(np.isfinite(v)):
        raise ValueError(f"mean_sd needs one or more finite values, got {values!r}")
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0}


def _check(errors_a: np.ndarray, errors_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(errors_a, dtype=np.float64)
    b = np.asarray(errors_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"errors_a {a.shape} and errors_b {b.shape} must both be (N, K)")
    if a.shape[0] < MIN_IMAGES:
        raise ValueError(f"need at least {MIN_IMAGES} paired images, got {a.shape[0]}")
    for name, e in (("errors_a", a), ("errors_b", b)):
        if not np.all(np.isfinite(e)):
            raise ValueError(f"{name} contains NaN or inf")
        if np.any(e < 0):
            raise ValueError(f"{name} contains negative radial errors")
    return a, b


def paired_differences(errors_a: np.ndarray, errors_b: np.ndarray) -> np.ndarray:
    """Per-image MRE differences ``B - A`` ``(N,)`` (for a paired-difference plot)."""
    a, b = _check(errors_a, errors_b)
    return b.mean(axis=1) - a.mean(axis=1)


def signed_rank_test(diffs: np.ndarray) -> dict[str, float | int | None]:
    """Two-sided Wilcoxon signed-rank test of paired differences ``(N,)`` and rank-biserial ``r``.

    All-zero differences give ``statistic 0.0, p_value 1.0, rank_biserial 0.0``."""
    d = np.asarray(diffs, dtype=np.float64)
    nz = d[d != 0]
    if nz.size == 0:
        return {"statistic": 0.0, "p_value": 1.0, "n_nonzero": 0, "rank_biserial": 0.0}
    res = sps.wilcoxon(nz, zero_method="wilcox", alternative="two-sided")
    ranks = sps.rankdata(np.abs(nz))
    r_plus, r_minus = ranks[nz > 0].sum(), ranks[nz < 0].sum()
    return {
        "statistic": _f(res.statistic),
        "p_value": _f(res.pvalue),
        "n_nonzero": int(nz.size),
        "rank_biserial": float((r_plus - r_minus) / (r_plus + r_minus)),
    }


def _zero_spread(d: np.ndarray) -> bool:
    """Differences all equal (up to rounding) but not all zero: t and ``d_z`` are undefined."""
    return bool(np.any(d)) and np.std(d, ddof=1) <= 1e-12 * abs(np.mean(d))


def _paired_t(d: np.ndarray) -> dict[str, float | None]:
    if not np.any(d):
        return {"statistic": 0.0, "p_value": 1.0}
    if _zero_spread(d):
        return {"statistic": None, "p_value": None}
    res = sps.ttest_rel(d, np.zeros_like(d))
    return {"statistic": _f(res.statistic), "p_value": _f(res.pvalue)}


def _cohens_dz(d: np.ndarray) -> float | None:
    if not np.any(d):
        return 0.0
    return None if _zero_spread(d) else float(np.mean(d) / np.std(d, ddof=1))


def bootstrap_means(values: np.ndarray, n_boot: int = 10000, seed: int = 0) -> np.ndarray:
    """Means over images of ``n_boot`` image resamples of per-image ``values (N,)`` or ``(N, S)``.

    Returns ``(n_boot,)`` or ``(n_boot, S)``; every column uses the same resamples (vectorised:
    resample counts times values)."""
    v = np.asarray(values, dtype=np.float64)
    n = v.shape[0]
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    flat = (np.arange(n_boot)[:, None] * n + idx).ravel()
    counts = np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)
    return counts @ v / n


def percentile_ci(samples: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Percentile interval ``[lo, hi]`` (along axis 0) at level ``1 - alpha``."""
    return np.quantile(samples, [alpha / 2, 1 - alpha / 2], axis=0)


def bootstrap_ci(values: np.ndarray, n_boot: int = 10000, seed: int = 0, alpha: float = 0.05) -> np.ndarray:
    """Percentile bootstrap CI of the mean of per-image ``values``: ``[lo, hi]`` (``(2,)`` or ``(2, S)``)."""
    return percentile_ci(bootstrap_means(values, n_boot, seed), alpha)


def _ci(lo_hi: np.ndarray) -> list[float | None]:
    return [_f(lo_hi[0]), _f(lo_hi[1])]


def compare_paired(
    errors_a: np.ndarray,
    errors_b: np.ndarray,
    thresholds_mm: Sequence[float] = (2.0, 2.5, 3.0, 4.0),
    n_boot: int = 10000,
    seed: int = 0,
    alpha: float = 0.05,
    landmark_names: Sequence[str] | None = None,
) -> dict:
    """Paired comparison of model B vs model A (differences ``B - A``); JSON-ready dict.

    Image-level Wilcoxon / paired t on per-image MRE, effect sizes, bootstrap CIs (``n_boot=0``
    skips them: ``bootstrap`` is None), SDR per threshold and per-landmark Wilcoxon with Holm
    correction across landmarks. See the module docstring for conventions."""
    a, b = _check(errors_a, errors_b)
    n, k = a.shape
    names = list(landmark_names) if landmark_names is not None else [f"L{i + 1}" for i in range(k)]
    if len(names) != k:
        raise ValueError(f"errors have {k} landmarks, landmark_names {len(names)}")
    thresholds = [float(t) for t in thresholds_mm]
    keys = [metrics.sdr_key(t) for t in thresholds]

    img_a, img_b = a.mean(axis=1), b.mean(axis=1)
    d = img_b - img_a
    mre_a, mre_b = metrics.mre(a), metrics.mre(b)
    sdr_a = {key: metrics.sdr(a, t) for key, t in zip(keys, thresholds, strict=True)}
    sdr_b = {key: metrics.sdr(b, t) for key, t in zip(keys, thresholds, strict=True)}

    wil = signed_rank_test(d)
    out = {
        "difference": "b - a",
        "images": n,
        "landmarks": k,
        "alpha": float(alpha),
        "mre_a": mre_a,
        "mre_b": mre_b,
        "mre_diff": mre_b - mre_a,
        "relative_mre_change": (mre_b - mre_a) / mre_a if mre_a > 0 else None,
        "median_image_diff": float(np.median(d)),
        "sdr_a": sdr_a,
        "sdr_b": sdr_b,
        "sdr_diff": {key: sdr_b[key] - sdr_a[key] for key in keys},
        "wilcoxon": {key: wil[key] for key in ("statistic", "p_value", "n_nonzero")},
        "ttest": _paired_t(d),
        "effect_size": {"rank_biserial": wil["rank_biserial"], "cohens_dz": _cohens_dz(d)},
        "bootstrap": None,
        "per_landmark": [],
    }

    if n_boot > 0:
        out["bootstrap"] = _bootstrap_block(a, b, thresholds, keys, n_boot, seed, alpha)
    out["per_landmark"] = _per_landmark_tests(a, b, names, alpha)
    return out


def _bootstrap_block(
    a: np.ndarray,
    b: np.ndarray,
    thresholds: list[float],
    keys: list[str],
    n_boot: int,
    seed: int,
    alpha: float,
) -> dict:
    """Percentile CIs of the MRE difference, relative change and SDR differences (images resampled)."""
    img_a, img_b = a.mean(axis=1), b.mean(axis=1)
    # per-image columns: MRE A, MRE B, MRE diff, SDR diff (%) per threshold
    sdr_cols = [((b <= t).mean(axis=1) - (a <= t).mean(axis=1)) * 100.0 for t in thresholds]
    boot = bootstrap_means(np.column_stack([img_a, img_b, img_b - img_a, *sdr_cols]), n_boot, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = boot[:, 1] / boot[:, 0] - 1.0
    ci = percentile_ci(boot, alpha)
    return {
        "method": "percentile, images resampled with replacement (paired)",
        "n_boot": int(n_boot),
        "seed": int(seed),
        "confidence": 1.0 - float(alpha),
        "mre_diff": _ci(ci[:, 2]),
        "relative_mre_change": _ci(percentile_ci(rel, alpha)) if np.all(np.isfinite(rel)) else None,
        "sdr_diff": {key: _ci(ci[:, 3 + j]) for j, key in enumerate(keys)},
    }


def _per_landmark_tests(a: np.ndarray, b: np.ndarray, names: list[str], alpha: float) -> list[dict]:
    """Per landmark: MREs, their difference and the Wilcoxon test, Holm-corrected across landmarks."""
    dl = b - a
    tests = [signed_rank_test(dl[:, j]) for j in range(a.shape[1])]
    p_raw = np.array([t["p_value"] for t in tests], dtype=np.float64)
    reject, p_holm, _, _ = multipletests(p_raw, alpha=alpha, method="holm")
    rows = []
    for j, name in enumerate(names):
        la, lb = float(a[:, j].mean()), float(b[:, j].mean())
        rows.append(
            {
                "landmark": name,
                "mre_a": la,
                "mre_b": lb,
                "mre_diff": lb - la,
                "wilcoxon_statistic": tests[j]["statistic"],
                "p_value": float(p_raw[j]),
                "p_holm": float(p_holm[j]),
                "reject": bool(reject[j]),
                "rank_biserial": tests[j]["rank_biserial"],
            }
        )
    return rows


def compare_many(errors: dict[str, np.ndarray], reference: str, holm: bool = True, **kw) -> dict[str, dict]:
    """:func:`compare_paired` of every variant (as B) against ``errors[reference]`` (as A).

    Keyed by variant name; each result gains ``reference`` and ``variant``. With ``holm`` (and at
    least one variant) the image-level Wilcoxon p-values are Holm-corrected across the variants:
    ``wilcoxon.p_holm_variants`` and ``wilcoxon.reject_variants`` (at ``alpha``). Bootstrap uses the
    same seed, hence the same image resamples, for every variant."""
    if reference not in errors:
        raise ValueError(f"reference {reference!r} not among {sorted(errors)}")
    out = {}
    for name, e in errors.items():
        if name == reference:
            continue
        res = compare_paired(errors[reference], e, **kw)
        out[name] = {"reference": reference, "variant": name, **res}
    if holm:
        holm_across(out.values(), kw.get("alpha", 0.05), "variants")
    return out


def holm_across(results, alpha: float, suffix: str) -> None:
    """Holm-correct the image-level Wilcoxon p-values of several :func:`compare_paired`
    results, in place: ``wilcoxon.p_holm_<suffix>`` and ``wilcoxon.reject_<suffix>``."""
    results = list(results)
    if not results:
        return
    p = np.array([r["wilcoxon"]["p_value"] for r in results], dtype=np.float64)
    reject, p_holm, _, _ = multipletests(p, alpha=alpha, method="holm")
    for r, pj, rj in zip(results, p_holm, reject, strict=True):
        r["wilcoxon"][f"p_holm_{suffix}"] = float(pj)
        r["wilcoxon"][f"reject_{suffix}"] = bool(rj)
