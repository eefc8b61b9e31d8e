"""A fitted calibration: a monotone (non-increasing) map from a landmark's confidence to its
expected radial error (mm), which a :class:`mahtnet.decoding.LandmarkReader` applies to what it
reads (``mahtnet predict --calibration``). It is fitted by isotonic regression
(``scipy.optimize.isotonic_regression``), pooled over the landmarks or one map per landmark;
:mod:`mahtnet.analysis.calibration` decides which and measures how well it holds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
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
