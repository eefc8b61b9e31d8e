"""Landmark-detection metrics: pure NumPy functions.

Errors are radial (Euclidean) distances at the original image resolution, in mm.
SDR at ``t`` mm is the share of landmarks with radial error ``<= t`` (ISBI 2015 definition).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def radial_errors_mm(pred: np.ndarray, gt: np.ndarray, spacing_mm: float | np.ndarray) -> np.ndarray:
    """Radial errors ``(N, K)`` in mm from ``pred, gt (N, K, 2)`` original px and the
    pixel spacing (scalar or ``(N,)``)."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.shape[-1] != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be (N, K, 2)")
    if not np.all(np.isfinite(pred)):
        raise ValueError("predictions contain NaN or inf")
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.ndim == 1:
        spacing = spacing[:, None]
    return np.linalg.norm(pred - gt, axis=-1) * spacing


def mre(errors: np.ndarray) -> float:
    """Mean radial error over all landmarks of all images."""
    return float(np.mean(errors))


def sdr(errors: np.ndarray, threshold_mm: float) -> float:
    """Success detection rate in percent: share of errors ``<= threshold_mm``."""
    return float(np.mean(np.asarray(errors) <= threshold_mm) * 100.0)


def sdr_key(threshold_mm: float) -> str:
    return f"sdr_{threshold_mm:g}mm"


def summarize(errors: np.ndarray, thresholds_mm: Sequence[float]) -> dict[str, float]:
    """MRE, SD, median and SDR at each threshold of an error array (any shape)."""
    e = np.asarray(errors, dtype=np.float64).ravel()
    out = {"mre_mm": mre(e), "sd_mm": float(np.std(e)), "median_mm": float(np.median(e))}
    out.update({sdr_key(t): sdr(e, t) for t in thresholds_mm})
    return out


def per_landmark(
    errors: np.ndarray, thresholds_mm: Sequence[float], names: Sequence[str]
) -> list[dict[str, float | str]]:
    """One :func:`summarize` row per landmark of ``errors (N, K)``."""
    errors = np.asarray(errors)
    if errors.shape[1] != len(names):
        raise ValueError(f"errors have {errors.shape[1]} landmarks, names {len(names)}")
    return [{"landmark": n, **summarize(errors[:, k], thresholds_mm)} for k, n in enumerate(names)]


def sdr_curve(errors: np.ndarray, thresholds_mm: Sequence[float]) -> list[dict[str, float]]:
    """SDR (%) at each threshold, for an SDR-vs-threshold plot."""
    return [{"threshold_mm": float(t), "sdr": sdr(errors, t)} for t in thresholds_mm]


def gross_errors(errors: np.ndarray, threshold_mm: float = 10.0) -> dict[str, float]:
    """The largest error and the number (and share, %) of errors beyond ``threshold_mm``:
    gross misses, a landmark put on the wrong structure."""
    e = np.asarray(errors, dtype=np.float64).ravel()
    over = int(np.sum(e > threshold_mm))
    key = f"{threshold_mm:g}mm"
    return {"max_mm": float(e.max()), f"n_over_{key}": over, f"pct_over_{key}": 100.0 * over / e.size}
