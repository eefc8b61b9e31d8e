"""Know when a reading is wrong: an image-level verdict, landmark flags and an error bound.

Every image gets a **verdict** before anything is measured on it (:func:`read_checked`):

``ok``
    a lateral cephalogram the model reads as it read its training images;
``mirrored``
    one facing the other way: read from the mirrored image, the points mapped back;
``rotated``
    turned by 90, 180 or 270 degrees: refused (a scan exported on its side is an export
    error that also turns the pixel spacing's rows and columns and the DICOM orientation: fix
    the export rather than have the landmarks silently re-oriented);
``not_a_lateral_cephalogram``
    nothing the model reads fits a skull;
``too_small``
    fewer pixels than :attr:`TrustModel.min_side_px` on a side, or, where the spacing is known,
    a field of view narrower than :attr:`TrustModel.min_fov_mm`.

A reading *fits* when the median over landmarks of the coarse heatmaps' confidence and of each
arg-max landmark's distance from where the shape prior puts it given the others (in the
prior's residual SD) lie within the range of the training images, widened by a margin
(:func:`fit`). Everything here is fitted on the training and validation images only and
travels in the model's card (``trust``).

Per landmark, **flags** mark readings to check first (low refiner confidence, a large move by
the refiner, a position the shape prior does not expect), and a split-conformal **bound**
(``coverage``, e.g. 90 %) on the error: ``scale_mm`` per landmark times one quantile of the
validation images' error / scale ratios.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

VERDICTS = ("ok", "mirrored", "rotated", "not_a_lateral_cephalogram", "too_small")
REFUSED = ("rotated", "not_a_lateral_cephalogram", "too_small")
MARGIN = {"residual": 1.5, "confidence": 0.9, "size": 0.5}  # how far past the training range


@dataclasses.dataclass(frozen=True)
class TrustModel:
    """The fitted thresholds (see the module docstring); ``fitted_on`` says on what."""

    min_side_px: int
    min_fov_mm: float
    max_median_residual_sd: float
    min_median_confidence: float
    flag_min_confidence: float
    flag_max_refine_shift_mm: float
    flag_max_residual_sd: float
    coverage: float
    scale_mm: tuple[float, ...]  # (K,)
    bound_quantile: float
    expected_quantile: float
    fitted_on: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"scale_mm": [round(v, 4) for v in self.scale_mm]}

    @classmethod
    def from_dict(cls, doc: dict) -> TrustModel:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(doc))
        if missing:
            raise ValueError(f"trust block lacks {', '.join(missing)}")
        values = {k: doc[k] for k in names}
        values["scale_mm"] = tuple(float(v) for v in values["scale_mm"])
        numbers = [v for k, v in values.items() if k not in ("fitted_on", "scale_mm")] + list(
            values["scale_mm"]
        )
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in numbers):
            raise ValueError("trust block: every threshold must be a finite number")
        return cls(**values)

    # ----------------------------------------------------------------------------- image level

    def too_small(self, shape: tuple[int, int], spacing_mm: float | None) -> str | None:
        """Why an image of ``shape (H, W)`` is too small to read, or None."""
        h, w = shape
        if min(h, w) < self.min_side_px:
            return f"{w}x{h} px: fewer than {self.min_side_px} px on a side"
        if spacing_mm is not None and min(h, w) * spacing_mm < self.min_fov_mm:
            fov = min(h, w) * spacing_mm
            return f"a field of view of {fov:.0f} mm on its short side, less than {self.min_fov_mm:.0f} mm"
        return None

    def image_figures(self, signals: dict[str, np.ndarray]) -> dict[str, float]:
        """The two image-level figures of one image's signals ``(K,)`` each."""
        res = np.asarray(signals["argmax_residual_sd"], dtype=np.float64)
        return {
            "median_residual_sd": float(np.median(res)) if np.all(np.isfinite(res)) else math.nan,
            "median_confidence": float(np.median(signals["coarse_confidence"])),
        }

    def fits(self, figures: dict[str, float]) -> bool:
        """Whether a reading with these figures looks like the training images' (the residual
        is not known without a pixel spacing: then the confidence alone decides)."""
        res = figures["median_residual_sd"]
        conf_ok = figures["median_confidence"] >= self.min_median_confidence
        return conf_ok and (math.isnan(res) or res <= self.max_median_residual_sd)

    # ----------------------------------------------------------------------------- landmarks

    def flags(self, signals: dict[str, np.ndarray], confidence: np.ndarray) -> np.ndarray:
        """``(K,)`` bool: landmarks to check first."""
        conf = np.asarray(confidence, dtype=np.float64)
        shift = np.nan_to_num(np.asarray(signals["refine_shift_mm"], dtype=np.float64), nan=0.0)
        res = np.nan_to_num(np.asarray(signals["residual_sd"], dtype=np.float64), nan=0.0)
        return (
            (conf < self.flag_min_confidence)
            | (shift > self.flag_max_refine_shift_mm)
            | (res > self.flag_max_residual_sd)
        )

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per landmark: the expected error (mm, the median of the calibration ratios) and the
        bound that held for ``coverage`` of the validation landmarks."""
        scale = np.asarray(self.scale_mm)
        return scale * self.expected_quantile, scale * self.bound_quantile


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The split-conformal quantile: the ``ceil((n + 1) * coverage)``-th smallest score."""
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    rank = min(math.ceil((len(s) + 1) * coverage), len(s))
    return float(s[rank - 1])


def fit(
    train_signals: Sequence[dict[str, np.ndarray]],
    train_shapes: Sequence[tuple[int, int]],
    spacing_mm: float,
    val_signals: Sequence[dict[str, np.ndarray]],
    val_confidence: np.ndarray,
    val_errors_mm: np.ndarray,
    train_errors_mm: np.ndarray,
    coverage: float = 0.9,
    flag_rate: float = 0.05,
    fitted_on: str = "",
    min_side_px: int | None = None,
) -> TrustModel:
    """Thresholds from the training images (image level: their range widened by
    :data:`MARGIN`; their per-landmark median error as the bound's scale) and the validation
    images (the flags' thresholds: each signal's ``1 - flag_rate / 3`` quantile, so that the
    three together flag about ``flag_rate``; the conformal quantile of error / scale).
    ``min_side_px``: the fewest pixels on a side (default: half the training images'; the
    network's input side is the natural floor)."""
    probe = TrustModel(0, 0.0, math.inf, 0.0, 0.0, math.inf, math.inf, coverage, (1.0,), 1.0, 1.0, "")
    figs = [probe.image_figures(s) for s in train_signals]
    side = min(min(s) for s in train_shapes)
    scale = np.median(np.asarray(train_errors_mm), axis=0)
    ratios = np.asarray(val_errors_mm) / scale
    q = 1.0 - flag_rate / 3.0
    val = {k: np.stack([s[k] for s in val_signals]) for k in ("refine_shift_mm", "residual_sd")}
    return TrustModel(
        min_side_px=int(side * MARGIN["size"]) if min_side_px is None else int(min_side_px),
        min_fov_mm=round(side * spacing_mm * MARGIN["size"], 1),
        max_median_residual_sd=round(max(f["median_residual_sd"] for f in figs) * MARGIN["residual"], 3),
        min_median_confidence=round(min(f["median_confidence"] for f in figs) * MARGIN["confidence"], 3),
        flag_min_confidence=float(np.quantile(val_confidence, 1.0 - q)),
        flag_max_refine_shift_mm=float(np.quantile(val["refine_shift_mm"], q)),
        flag_max_residual_sd=float(np.quantile(val["residual_sd"], q)),
        coverage=coverage,
        scale_mm=tuple(float(v) for v in scale),
        bound_quantile=conformal_quantile(ratios, coverage),
        expected_quantile=float(np.median(ratios)),
        fitted_on=fitted_on,
    )


# --------------------------------------------------------------------------------- orientation

ORIENTATIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "mirrored": (lambda im: im[:, ::-1], "mirrored"),
    "rotated 90": (lambda im: np.rot90(im, 1), "rotated"),
    "rotated 180": (lambda im: np.rot90(im, 2), "rotated"),
    "rotated 270": (lambda im: np.rot90(im, 3), "rotated"),
}


@dataclasses.dataclass
class Checked:
    """One image's verdict, why, and the reading to report (None where refused and not forced)."""

    verdict: str
    reason: str
    figures: dict[str, float]
    readout: object | None  # mahtnet.decoding.reader.Readout of one image, original orientation
    forced: bool = False

    @property
    def refused(self) -> bool:
        return self.verdict in REFUSED


def unmirror(readout, width: int):
    """A reading of the mirrored image mapped back: ``x -> width - 1 - x`` in every variant."""
    for name, pts in readout.landmarks.items():
        back = pts.copy()
        back[..., 0] = width - 1 - back[..., 0]
        readout.landmarks[name] = back
    return readout


def read_checked(
    read: Callable, trust: TrustModel, pixels: np.ndarray, spacing: float | None, force: bool = False
):
    """The verdict of one image (``pixels (H, W)``) and its reading: ``read(pixels, spacing)``
    returns a one-image Readout. Refused images are read anyway with ``force`` (marked)."""
    small = trust.too_small(pixels.shape[:2], spacing)
    if small is not None:
        out = read(pixels, spacing) if force else None
        figures = {} if out is None else trust.image_figures(_one(out.signals))
        return Checked("too_small", small, figures, out, force)
    first = read(pixels, spacing)
    figures = trust.image_figures(_one(first.signals))
    if trust.fits(figures):
        return Checked("ok", "reads like the training images", figures, first)
    for name, (turn, verdict) in ORIENTATIONS.items():
        other = read(np.ascontiguousarray(turn(pixels)), spacing)
        f = trust.image_figures(_one(other.signals))
        if not trust.fits(f):
            continue
        if verdict == "mirrored":
            return Checked(
                "mirrored",
                "facing left: read mirrored, points mapped back",
                f,
                unmirror(other, pixels.shape[1]),
            )
        turned = (360 - int(name.split()[1])) % 360  # the correction's opposite
        why = f"turned {turned} degrees counter-clockwise: turn it upright (facing right) and send it again"
        return Checked("rotated", why, f, first if force else None, force)
    res, conf = figures["median_residual_sd"], figures["median_confidence"]
    why = (
        f"nothing fits a skull in any orientation (median shape residual {res:.1f} SD, limit "
        f"{trust.max_median_residual_sd:.1f}; median confidence {conf:.2f}, "
        f"limit {trust.min_median_confidence:.2f})"
    )
    return Checked("not_a_lateral_cephalogram", why, figures, first if force else None, force)


def _one(signals: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    if signals is None:
        raise ValueError("the image verdict needs the reader's signals (a shape prior)")
    return {k: v[0] for k, v in signals.items()}
