"""A clinic's landmark conventions, learned from its corrections: per-landmark offsets added to
the base model's predictions (pure NumPy; no model, no files).

A *correction* of one image is the corrected position of each landmark minus where the base
model put it, ``r (K, 2)`` in mm. Over ``k`` corrected images each landmark's corrections have a
mean (the clinic's convention, if it is one) and a spread (the model's own noise plus the
annotator's). The methods, all fitted by :func:`fit` and applied by :meth:`Convention.apply`:

``mean``
    the mean correction of each landmark in image axes (the plain baseline);
``shrunk``
    that mean shrunk towards zero by how sure it is (positive-part James-Stein per landmark:
    ``w = max(0, 1 - (s^2 / k) / |mean|^2)``, ``s^2`` the per-axis variance of the corrections,
    pooled with the base model's own residual variance ``prior_var`` with ``PRIOR_WEIGHT``
    pseudo-images, so that one or two corrections cannot pass for a convention);
``frame-mean`` / ``frame-shrunk``
    the same in a frame set by each image's own landmarks (origin at sella, x-axis along
    sella -> nasion, unit the sella-nasion length): a convention that turns and scales with the
    head (a porion placed "2 mm behind" stays behind when the patient tilts).

:func:`leave_one_out` scores a method on the ``k`` images themselves (fit on ``k - 1``, apply to
the one left out), which is how :func:`choose` picks a method without any other images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from mahtnet.landmarks import LANDMARK_NAMES, NUM_LANDMARKS

METHODS = ("mean", "shrunk", "frame-mean", "frame-shrunk")
PRIOR_WEIGHT = 2.0  # pseudo-images of the base model's residual variance in the pooled spread
SELLA, NASION = LANDMARK_NAMES.index("sella"), LANDMARK_NAMES.index("nasion")


@dataclasses.dataclass(frozen=True)
class Convention:
    """What one adaptation learned: ``offset (K, 2)`` in mm (image axes) or in units of the
    sella-nasion length (``frame``), and the per-landmark figures of its ``k`` corrections."""

    method: str
    k: int
    offset: np.ndarray  # (K, 2)
    mean: np.ndarray  # (K, 2) mean correction, the same units as offset
    spread: np.ndarray  # (K,) RMS distance of the corrections from their mean (same units)
    weight: np.ndarray  # (K,) shrinkage factor in [0, 1] (1: the plain mean)

    @property
    def frame(self) -> bool:
        return self.method.startswith("frame-")

    def apply(self, points: np.ndarray, spacing_mm: float | np.ndarray) -> np.ndarray:
        """``points (..., K, 2)`` original px -> adapted points, the same shape."""
        points = np.asarray(points, dtype=np.float64)
        spacing = np.asarray(spacing_mm, dtype=np.float64)[..., None, None]
        if not self.frame:
            return points + self.offset / spacing
        rot, scale = _frame(points)  # (..., 2, 2), (...,) in px
        return points + np.einsum("...ij,kj->...ki", rot, self.offset) * scale[..., None, None]

    def to_dict(self) -> dict:
        """The card's figures: per landmark the learned offset, mean correction, spread and weight."""
        unit = "sella-nasion lengths" if self.frame else "mm"
        rows = [
            {
                "name": name,
                "offset": [round(float(v), 6) for v in self.offset[i]],
                "mean_correction": [round(float(v), 6) for v in self.mean[i]],
                "spread": round(float(self.spread[i]), 6),
                "weight": round(float(self.weight[i]), 6),
            }
            for i, name in enumerate(LANDMARK_NAMES)
        ]
        return {"method": self.method, "k": self.k, "unit": unit, "landmarks": rows}

    @classmethod
    def from_dict(cls, doc: dict) -> Convention:
        rows = doc["landmarks"]
        if [r["name"] for r in rows] != list(LANDMARK_NAMES):
            raise ValueError(f"expected the {NUM_LANDMARKS} ISBI landmarks in order")
        if doc["method"] not in METHODS:
            raise ValueError(f"unknown method {doc['method']!r}; valid: {', '.join(METHODS)}")
        arr = {
            key: np.array([r[key] for r in rows], dtype=np.float64) for key in ("offset", "spread", "weight")
        }
        mean = np.array([r["mean_correction"] for r in rows], dtype=np.float64)
        if not all(np.all(np.isfinite(a)) for a in (*arr.values(), mean)):
            raise ValueError("a learned figure is not a finite number")
        return cls(doc["method"], int(doc["k"]), arr["offset"], mean, arr["spread"], arr["weight"])


def _frame(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each configuration's frame: rotation ``(..., 2, 2)`` whose columns are the sella->nasion
    axis and its normal, and the sella-nasion length ``(...,)`` (same unit as ``points``)."""
    axis = points[..., NASION, :] - points[..., SELLA, :]
    length = np.linalg.norm(axis, axis=-1)
    u = axis / np.maximum(length, 1e-9)[..., None]
    normal = np.stack([-u[..., 1], u[..., 0]], axis=-1)
    return np.stack([u, normal], axis=-1), length


def corrections(predicted: np.ndarray, corrected: np.ndarray, spacing_mm: float | np.ndarray, frame: bool):
    """``(N, K, 2)`` corrections: in mm (image axes), or in the frame of each predicted
    configuration in sella-nasion lengths."""
    predicted = np.asarray(predicted, dtype=np.float64)
    delta = np.asarray(corrected, dtype=np.float64) - predicted
    if not frame:
        return delta * np.asarray(spacing_mm, dtype=np.float64).reshape(-1, 1, 1)
    rot, scale = _frame(predicted)
    return np.einsum("nji,nkj->nki", rot, delta) / scale[:, None, None]


def fit(
    method: str,
    predicted: np.ndarray,
    corrected: np.ndarray,
    spacing_mm: float | np.ndarray,
    prior_var: np.ndarray | None = None,
) -> Convention:
    """The convention of ``k`` corrected images: ``predicted``, ``corrected (k, K, 2)`` original
    px. ``prior_var (K,)``: the base model's per-axis residual variance in mm^2 (``shrunk``
    pools it with the corrections' own; None: the corrections' alone, and nothing for k = 1)."""
    if method not in METHODS:
        raise KeyError(f"unknown adaptation method {method!r}; valid: {', '.join(METHODS)}")
    predicted = np.asarray(predicted, dtype=np.float64)
    k = predicted.shape[0]
    if k < 1:
        raise ValueError("no corrected images: k must be at least 1")
    frame = method.startswith("frame-")
    r = corrections(predicted, corrected, spacing_mm, frame)  # (k, K, 2)
    mean = r.mean(axis=0)
    spread = np.sqrt(((r - mean) ** 2).sum(axis=-1).mean(axis=0))  # (K,)
    weight = np.ones(NUM_LANDMARKS)
    if method.endswith("shrunk"):
        var = ((r - mean) ** 2).sum(axis=(0, 2)) / (2 * max(k - 1, 1))  # per-axis variance (K,)
        dof = 2.0 * (k - 1)
        if prior_var is not None:
            prior = np.asarray(prior_var, dtype=np.float64)
            if frame:  # mm^2 -> (sella-nasion lengths)^2 of these images
                sn = _frame(predicted)[1] * np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
                prior = prior / float(np.mean(sn)) ** 2
            var = (dof * var + 2.0 * PRIOR_WEIGHT * prior) / (dof + 2.0 * PRIOR_WEIGHT)
        elif k == 1:
            var = np.full(NUM_LANDMARKS, np.inf)
        norm2 = (mean**2).sum(axis=-1) / 2.0  # per-axis mean square of the mean correction
        weight = np.clip(1.0 - (var / k) / np.maximum(norm2, 1e-12), 0.0, 1.0)
    return Convention(method, k, mean * weight[:, None], mean, spread, weight)


def leave_one_out(
    method: str,
    predicted: np.ndarray,
    corrected: np.ndarray,
    spacing_mm: float | np.ndarray,
    prior_var: np.ndarray | None = None,
) -> dict[str, float]:
    """The method's error on each of the ``k`` images when fitted on the other ``k - 1``: MRE
    (mm) of the adapted points and of the unadapted ones on the same images. Needs k >= 2."""
    predicted, corrected = np.asarray(predicted, np.float64), np.asarray(corrected, np.float64)
    k = predicted.shape[0]
    if k < 2:
        raise ValueError("leave-one-out needs at least 2 corrected images")
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64).reshape(-1), (k,))
    adapted, plain = [], []
    for i in range(k):
        rest = np.arange(k) != i
        conv = fit(method, predicted[rest], corrected[rest], spacing[rest], prior_var)
        out = conv.apply(predicted[i], spacing[i])
        adapted.append(np.linalg.norm(out - corrected[i], axis=-1).mean() * spacing[i])
        plain.append(np.linalg.norm(predicted[i] - corrected[i], axis=-1).mean() * spacing[i])
    return {"mre_mm": float(np.mean(adapted)), "unadapted_mre_mm": float(np.mean(plain)), "k": k}


def choose(
    predicted: np.ndarray,
    corrected: np.ndarray,
    spacing_mm: float | np.ndarray,
    prior_var: np.ndarray | None = None,
    methods: Sequence[str] = METHODS,
    default: str = "shrunk",
) -> tuple[str, dict[str, dict]]:
    """The method with the lowest leave-one-out MRE on the ``k`` images (``default`` below 3
    images, where one left out says little), and every method's leave-one-out figures."""
    k = np.asarray(predicted).shape[0]
    if k < 3:
        return default, {}
    scores = {m: leave_one_out(m, predicted, corrected, spacing_mm, prior_var) for m in methods}
    return min(scores, key=lambda m: (scores[m]["mre_mm"], m != default)), scores
