"""Calibrated confidence: the heatmap-peak confidence turned into an expected radial error.

A monotone (non-increasing) map from confidence to error is fitted by isotonic regression
(``scipy.optimize.isotonic_regression``) on the **validation** images' landmarks and applied
to the test images (or to a new X-ray in ``mahtnet predict --calibration``). Pure NumPy/SciPy:
the caller supplies confidences and errors.

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

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from scipy.optimize import isotonic_regression

FORMAT = "mahtnet-error-calibration"
MIN_IMAGES_PER_LANDMARK = 30  # fewer validation images: one map pooled over the landmarks


class CalibrationError(ValueError):
    """A calibration file that cannot be used with a model; the message names the file."""


@dataclasses.dataclass(frozen=True)
class ErrorCalibration:
    """Piecewise-linear, non-increasing map confidence -> expected error (mm)."""

    confidence: np.ndarray  # (M,) increasing knots
    error_mm: np.ndarray  # (M,) non-increasing expected error at each knot
    model: dict[str, Any]  # what it was fitted for: architecture, input size, landmarks, training data
    per_landmark: tuple[ErrorCalibration, ...] | None = None  # one map per landmark (column)

    @classmethod
    def fit(cls, confidence: np.ndarray, error_mm: np.ndarray, model: dict[str, Any]) -> ErrorCalibration:
        """One map pooled over every (image, landmark) pair."""
        c, e = np.asarray(confidence, float).ravel(), np.asarray(error_mm, float).ravel()
        if c.shape != e.shape or c.size < 2 or not (np.isfinite(c).all() and np.isfinite(e).all()):
            raise ValueError("calibration needs at least two finite (confidence, error) pairs")
        order = np.argsort(c, kind="stable")
        fitted = isotonic_regression(e[order], increasing=False).x
        knots, first, counts = np.unique(c[order], return_index=True, return_counts=True)
        return cls(knots, np.add.reduceat(fitted, first) / counts, dict(model))  # ties: their mean

    @classmethod
    def fit_per_landmark(
        cls, confidence: np.ndarray, error_mm: np.ndarray, model: dict[str, Any]
    ) -> ErrorCalibration:
        """One map per landmark (columns of ``(N, K)`` arrays), the pooled one beside them."""
        c, e = np.asarray(confidence, float), np.asarray(error_mm, float)
        maps = tuple(cls.fit(c[:, k], e[:, k], {}) for k in range(c.shape[1]))
        return dataclasses.replace(cls.fit(c, e, model), per_landmark=maps)

    def expected_error(self, confidence: np.ndarray) -> np.ndarray:
        """Expected radial error (mm) of confidences ``(..., K)``; constant beyond the fitted
        confidences."""
        c = np.asarray(confidence, float)
        if self.per_landmark is None:
            return np.interp(c, self.confidence, self.error_mm)
        if c.shape[-1] != len(self.per_landmark):
            raise CalibrationError(
                f"{c.shape[-1]} landmarks, but the calibration has {len(self.per_landmark)}"
            )
        return np.stack([m.expected_error(c[..., k]) for k, m in enumerate(self.per_landmark)], axis=-1)

    def to_dict(self) -> dict[str, Any]:
        maps = None if self.per_landmark is None else [
            {"confidence": m.confidence.tolist(), "error_mm": m.error_mm.tolist()} for m in self.per_landmark
        ]  # fmt: skip
        return {
            "format": FORMAT,
            "model": self.model,
            "confidence": self.confidence.tolist(),
            "error_mm": self.error_mm.tolist(),
            "per_landmark": maps,
        }

    @classmethod
    def load(cls, path: str | Path) -> ErrorCalibration:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"calibration file not found: {path}")
        try:
            d = json.loads(path.read_text())
            if d.get("format") != FORMAT:
                raise CalibrationError(f"{path}: not a MAHT-Net error calibration")
            maps = d.get("per_landmark")
            if maps is not None:
                maps = tuple(
                    cls(np.asarray(m["confidence"], float), np.asarray(m["error_mm"], float), {})
                    for m in maps
                )
            return cls(np.asarray(d["confidence"], float), np.asarray(d["error_mm"], float), d["model"], maps)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise CalibrationError(f"{path}: unreadable calibration ({err})") from None

    def check_model(self, model: dict[str, Any], path: str | Path) -> None:
        """Refuse a model other than the one the calibration was fitted for."""
        differ = [k for k, v in self.model.items() if k in model and model[k] != v]
        if differ:
            raise CalibrationError(f"{path}: fitted for another model (differs in {', '.join(differ)})")


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
