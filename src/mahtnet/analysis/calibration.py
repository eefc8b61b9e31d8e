"""Calibrated confidence: the heatmap-peak confidence turned into an expected radial error.

A monotone (non-increasing) map from confidence to error
(:class:`mahtnet.decoding.calibration.ErrorCalibration`) is fitted on the **validation**
images' landmarks and applied to the test images (or to a new X-ray in ``mahtnet predict
--calibration``); this module fits it and measures how well it holds. Pure NumPy/SciPy: the
caller supplies confidences and errors.

**Pooled or per landmark.** With at least :data:`MIN_IMAGES_PER_LANDMARK` validation images,
one map per landmark (:func:`fit_calibration`); with fewer, one map pooled over the landmarks
(the ISBI validation split has 15 images, the synthetic one 5: pooled), and the calibration
file says which (``per_landmark``). :func:`cross_validated` measures on the validation images
themselves, image-wise K-fold, how much better the map predicts the error than a constant
guess (the mean error of the other folds).

Reliability: the test landmarks are put in bins of equal count by their *expected* error; per
bin the mean expected and the mean observed error; the calibration error is the count-weighted
mean of their absolute difference (mm), the regression analogue of the expected calibration
error of classifiers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from mahtnet.decoding.calibration import ErrorCalibration

MIN_IMAGES_PER_LANDMARK = 30  # fewer validation images: one map pooled over the landmarks


def reliability(expected: np.ndarray, observed: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Equal-count bins of ``expected`` error: per bin the mean expected and observed error,
    and the calibration error (count-weighted mean absolute difference, mm)."""
    x, y = np.asarray(expected, float).ravel(), np.asarray(observed, float).ravel()
    order = np.argsort(x, kind="stable")
    rows = []
    for part in np.array_split(order, min(bins, x.size)):
        rows.append(
            {"n": int(part.size), "expected_mm": float(x[part].mean()), "observed_mm": float(y[part].mean())}
        )
    gap = sum(r["n"] * abs(r["expected_mm"] - r["observed_mm"]) for r in rows) / x.size
    return {"bins": rows, "calibration_error_mm": float(gap)}


def per_landmark_spearman(
    confidence: np.ndarray, error_mm: np.ndarray, names: Sequence[str]
) -> dict[str, float]:
    """Spearman rho of confidence against error for each landmark (``(N, K)`` arrays)."""
    out = {}
    for k, name in enumerate(names):
        rho = stats.spearmanr(confidence[:, k], error_mm[:, k]).statistic
        out[name] = None if not np.isfinite(rho) else float(rho)
    return out


def flagged(confidence: np.ndarray, error_mm: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Share of landmarks below the low-confidence ``threshold`` and the mean error of the
    flagged and the other landmarks."""
    low = np.asarray(confidence) < threshold
    e = np.asarray(error_mm)
    return {
        "threshold": threshold,
        "share": float(low.mean()),
        "mre_flagged_mm": float(e[low].mean()) if low.any() else None,
        "mre_other_mm": float(e[~low].mean()) if (~low).any() else None,
    }


def fit_calibration(confidence: np.ndarray, error_mm: np.ndarray, model: dict[str, Any]) -> ErrorCalibration:
    """Per landmark with at least :data:`MIN_IMAGES_PER_LANDMARK` images (rows of the ``(N, K)``
    arrays), else pooled."""
    if len(confidence) >= MIN_IMAGES_PER_LANDMARK:
        return ErrorCalibration.fit_per_landmark(confidence, error_mm, model)
    return ErrorCalibration.fit(confidence, error_mm, model)


def cross_validated(confidence: np.ndarray, error_mm: np.ndarray, folds: int = 5) -> dict[str, float]:
    """Image-wise K-fold on ``(N, K)`` validation arrays: the mean absolute difference between
    the expected (fitted on the other folds, as :func:`fit_calibration` would) and the observed
    error, against a constant guess (the other folds' mean error), in mm."""
    c, e = np.asarray(confidence, float), np.asarray(error_mm, float)
    n = len(c)
    if n < 2:
        raise ValueError("cross-validating a calibration needs at least two images")
    parts = np.array_split(np.arange(n), min(folds, n))
    fitted, constant = np.empty_like(e), np.empty_like(e)
    for held in parts:
        rest = np.setdiff1d(np.arange(n), held)
        fitted[held] = fit_calibration(c[rest], e[rest], {}).expected_error(c[held])
        constant[held] = e[rest].mean()
    return {
        "folds": len(parts),
        "expected_error_mae_mm": float(abs(fitted - e).mean()),
        "constant_guess_mae_mm": float(abs(constant - e).mean()),
    }
