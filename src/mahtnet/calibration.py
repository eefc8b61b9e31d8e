"""Calibrated confidence: the heatmap-peak confidence turned into an expected radial error.

A monotone (non-increasing) map from confidence to error is fitted by isotonic regression
(``scipy.optimize.isotonic_regression``) on the **validation** images' landmarks and applied
to the test images (or to a new X-ray in ``mahtnet predict --calibration``). Pure NumPy/SciPy:
the caller supplies confidences and errors.

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


class CalibrationError(ValueError):
    """A calibration file that cannot be used with a model; the message names the file."""


@dataclasses.dataclass(frozen=True)
class ErrorCalibration:
    """Piecewise-linear, non-increasing map confidence -> expected error (mm)."""

    confidence: np.ndarray  # (M,) increasing knots
    error_mm: np.ndarray  # (M,) non-increasing expected error at each knot
    model: dict[str, Any]  # what it was fitted for: architecture, input size, landmarks, training data

    @classmethod
    def fit(cls, confidence: np.ndarray, error_mm: np.ndarray, model: dict[str, Any]) -> ErrorCalibration:
        c, e = np.asarray(confidence, float).ravel(), np.asarray(error_mm, float).ravel()
        if c.shape != e.shape or c.size < 2 or not (np.isfinite(c).all() and np.isfinite(e).all()):
            raise ValueError("calibration needs at least two finite (confidence, error) pairs")
        order = np.argsort(c, kind="stable")
        fitted = isotonic_regression(e[order], increasing=False).x
        knots, first, counts = np.unique(c[order], return_index=True, return_counts=True)
        return cls(knots, np.add.reduceat(fitted, first) / counts, dict(model))  # ties: their mean

    def expected_error(self, confidence: np.ndarray) -> np.ndarray:
        """Expected radial error (mm); constant beyond the fitted confidences."""
        return np.interp(confidence, self.confidence, self.error_mm)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.model,
            "confidence": self.confidence.tolist(),
            "error_mm": self.error_mm.tolist(),
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
            return cls(np.asarray(d["confidence"], float), np.asarray(d["error_mm"], float), d["model"])
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
