"""Know when a reading is wrong: an image-level verdict, landmark flags and an error bound.

Every image gets a **verdict** before anything is measured on it (:func:`read_checked`):

``ok``
    a lateral cephalogram the model reads as it read its training images;
``unusual``
    read and reported, but less like the training images than any of them (an unusual skull,
    exposure or scanner): every landmark is on the check-first list;
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
(:func:`fit`). One that does not fit is still *readable* (``unusual``) while both figures lie
nearer the training images than the images made from them that are not upright cephalograms
(mirrored, turned, half a skull: halfway between the two), and the image is sharper than
halfway between the training images and the same images blurred by 3 mm (:func:`sharpness`).
Everything here is fitted on the training and validation images only and travels in the
model's card (``trust``).

Per landmark, **flags** mark readings to check first (low refiner confidence, a large move by
the refiner, a position the shape prior does not expect and, for an ensemble, members that
disagree), and a split-conformal **bound**
(``coverage``, e.g. 90 %) on the error: ``scale_mm`` per landmark times one quantile of the
validation images' error / scale ratios.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from mahtnet.decoding.recipe import ReaderSpec, read_card

VERDICTS = ("ok", "unusual", "mirrored", "rotated", "not_a_lateral_cephalogram", "too_small")
REFUSED = ("rotated", "not_a_lateral_cephalogram", "too_small")
MARGIN = {"residual": 1.5, "confidence": 0.9, "size": 0.5}  # how far past the training range
SHARPNESS_SIZE = (256, 320)  # (width, height) the sharpness is measured at: the network's input
BLUR_MM = 3.0  # the blur of the made negatives the sharpness limit is fitted against


def sharpness(pixels: np.ndarray) -> float:
    """The mean absolute Laplacian over the intensity SD, at the network's input size: about
    0.1 for the ISBI images, 0.01 after a 3 mm Gaussian blur, 0 for a flat one; free of scale
    and contrast (grey levels 0-255; an SD below one grey level counts as one)."""
    x = cv2.resize(np.asarray(pixels, dtype=np.float32), SHARPNESS_SIZE, interpolation=cv2.INTER_AREA)
    return float(np.mean(np.abs(cv2.Laplacian(x, cv2.CV_32F))) / max(float(x.std()), 1.0))


@dataclasses.dataclass(frozen=True)
class TrustModel:
    """The fitted thresholds (see the module docstring); ``fitted_on`` says on what."""

    min_side_px: int
    min_fov_mm: float
    max_median_residual_sd: float
    min_median_confidence: float
    refuse_max_median_residual_sd: float
    refuse_min_median_confidence: float
    refuse_min_sharpness: float
    flag_min_confidence: float
    flag_max_refine_shift_mm: float
    flag_max_residual_sd: float
    coverage: float
    scale_mm: tuple[float, ...]  # (K,)
    bound_quantile: float
    expected_quantile: float
    fitted_on: str
    flag_max_spread_mm: float | None = None  # an ensemble's members' disagreement (None: one network)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"scale_mm": [round(v, 4) for v in self.scale_mm]}

    @classmethod
    def from_dict(cls, doc: dict) -> TrustModel:
        fields = dataclasses.fields(cls)
        required = {f.name for f in fields if f.default is dataclasses.MISSING}
        missing = sorted(required - set(doc))
        if missing:
            raise ValueError(f"trust block lacks {', '.join(missing)}")
        values = {f.name: doc[f.name] for f in fields if f.name in doc}
        values["scale_mm"] = tuple(float(v) for v in values["scale_mm"])
        numbers = [
            v
            for k, v in values.items()
            if k not in ("fitted_on", "scale_mm") and not (v is None and k not in required)
        ] + list(values["scale_mm"])
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

    @staticmethod
    def image_figures(signals: dict[str, np.ndarray]) -> dict[str, float]:
        """The two image-level figures of one image's signals ``(K,)`` each (no threshold
        involved: :func:`fit` takes them before a model exists)."""
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

    def readable(self, figures: dict[str, float]) -> str | None:
        """Why a reading that does not fit is not read at all (None: read it, ``unusual``): the
        looser limits between the training images and the negatives made from them."""
        res, conf = figures["median_residual_sd"], figures["median_confidence"]
        if figures.get("sharpness", math.inf) < self.refuse_min_sharpness:
            sharp = figures["sharpness"]
            return f"too blurred to read (sharpness {sharp:.3f}, limit {self.refuse_min_sharpness:.3f})"
        if conf < self.refuse_min_median_confidence or (
            not math.isnan(res) and res > self.refuse_max_median_residual_sd
        ):
            return (
                f"nothing fits a skull in any orientation (median shape residual {res:.1f} SD, limit "
                f"{self.refuse_max_median_residual_sd:.1f}; median confidence {conf:.2f}, "
                f"limit {self.refuse_min_median_confidence:.2f})"
            )
        return None

    # ----------------------------------------------------------------------------- landmarks

    def flags(self, signals: dict[str, np.ndarray], confidence: np.ndarray) -> np.ndarray:
        """``(K,)`` bool: landmarks to check first."""
        conf = np.asarray(confidence, dtype=np.float64)
        shift = np.nan_to_num(np.asarray(signals["refine_shift_mm"], dtype=np.float64), nan=0.0)
        res = np.nan_to_num(np.asarray(signals["residual_sd"], dtype=np.float64), nan=0.0)
        flags = (
            (conf < self.flag_min_confidence)
            | (shift > self.flag_max_refine_shift_mm)
            | (res > self.flag_max_residual_sd)
        )
        if self.flag_max_spread_mm is not None and "members_spread_mm" in signals:
            spread = np.nan_to_num(np.asarray(signals["members_spread_mm"], dtype=np.float64), nan=0.0)
            flags |= spread > self.flag_max_spread_mm
        return flags

    def check_first(
        self, unusual: bool, signals: dict[str, np.ndarray], confidence: np.ndarray
    ) -> np.ndarray:
        """``(K,)`` bool: the :meth:`flags` of a reading that fits; every landmark of an
        unusual one (:attr:`Checked.unusual`)."""
        flags = self.flags(signals, confidence)
        return np.ones_like(flags) if unusual else flags

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per landmark: the expected error (mm, the median of the calibration ratios) and the
        bound that held for ``coverage`` of the validation landmarks."""
        scale = np.asarray(self.scale_mm)
        return scale * self.expected_quantile, scale * self.bound_quantile


def load_trust(spec: ReaderSpec) -> TrustModel | None:
    """The ``trust`` block of the recipe's card (the image verdict, landmark flags and error
    bound fitted for this model), or None without one."""
    if spec.card is None:
        return None
    block = read_card(spec.card).get("trust")
    if block is None:
        return None
    try:
        return TrustModel.from_dict(block)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{spec.card}: {err}") from None


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
    *,
    train_sharpness: Sequence[float],
    blurred_sharpness: Sequence[float],
    negative_signals: Sequence[dict[str, np.ndarray]],
    coverage: float = 0.9,
    flag_rate: float = 0.05,
    fitted_on: str = "",
    min_side_px: int | None = None,
) -> TrustModel:
    """Thresholds from the training images (image level: their range widened by
    :data:`MARGIN`; their per-landmark median error as the bound's scale) and the validation
    images (the flags' thresholds: each signal's ``1 - flag_rate / n`` quantile, so that the
    ``n`` signals together flag about ``flag_rate``: three, four for an ensemble, whose
    ``members_spread_mm`` is one; the conformal quantile of error / scale).
    ``min_side_px``: the fewest pixels on a side (default: half the training images'; the
    network's input side is the natural floor). The looser limits of :meth:`TrustModel.readable`
    lie halfway between the training images (their extreme figure) and the nearest of
    ``negative_signals`` (readings of training images made into non-cephalograms: mirrored,
    turned, halved) or of ``blurred_sharpness`` (the training images blurred by
    :data:`BLUR_MM`)."""
    figs = [TrustModel.image_figures(s) for s in train_signals]
    neg = [TrustModel.image_figures(s) for s in negative_signals]
    worst_res = max(f["median_residual_sd"] for f in figs)
    worst_conf = min(f["median_confidence"] for f in figs)
    side = min(min(s) for s in train_shapes)
    scale = np.median(np.asarray(train_errors_mm), axis=0)
    ratios = np.asarray(val_errors_mm) / scale
    ensemble = all("members_spread_mm" in s for s in val_signals)
    q = 1.0 - flag_rate / (4.0 if ensemble else 3.0)
    keys = ("refine_shift_mm", "residual_sd") + ("members_spread_mm",) * ensemble
    val = {k: np.stack([s[k] for s in val_signals]) for k in keys}
    return TrustModel(
        min_side_px=int(side * MARGIN["size"]) if min_side_px is None else int(min_side_px),
        min_fov_mm=round(side * spacing_mm * MARGIN["size"], 1),
        max_median_residual_sd=round(worst_res * MARGIN["residual"], 3),
        min_median_confidence=round(worst_conf * MARGIN["confidence"], 3),
        refuse_max_median_residual_sd=round((worst_res + min(f["median_residual_sd"] for f in neg)) / 2, 3),
        refuse_min_median_confidence=round((worst_conf + max(f["median_confidence"] for f in neg)) / 2, 3),
        refuse_min_sharpness=round((min(train_sharpness) + max(blurred_sharpness)) / 2, 4),
        flag_min_confidence=float(np.quantile(val_confidence, 1.0 - q)),
        flag_max_refine_shift_mm=float(np.quantile(val["refine_shift_mm"], q)),
        flag_max_residual_sd=float(np.quantile(val["residual_sd"], q)),
        coverage=coverage,
        scale_mm=tuple(float(v) for v in scale),
        bound_quantile=conformal_quantile(ratios, coverage),
        expected_quantile=float(np.median(ratios)),
        fitted_on=fitted_on,
        flag_max_spread_mm=float(np.quantile(val["members_spread_mm"], q)) if ensemble else None,
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
    unusual: bool = False  # read, but not fitting the training images: every landmark to check

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
    returns a one-image Readout. The image as it is, then mirrored and turned, is tried against
    the training images' range (:meth:`TrustModel.fits`), then against the looser limits
    (:meth:`TrustModel.readable`: ``unusual``). Refused images are read anyway with ``force``
    (marked)."""
    small = trust.too_small(pixels.shape[:2], spacing)
    if small is not None:
        out = read(pixels, spacing) if force else None
        figures = {} if out is None else trust.image_figures(_one(out.signals))
        return Checked("too_small", small, figures, out, force)
    first = read(pixels, spacing)
    figures = trust.image_figures(_one(first.signals))
    if trust.fits(figures):
        return Checked("ok", "reads like the training images", figures, first)
    sharp = sharpness(pixels)  # only where the looser limits may decide (a resize of the image)
    figures["sharpness"] = sharp
    turned = {}  # orientation -> (its reading, its figures)
    for name, (turn, _) in ORIENTATIONS.items():
        other = read(np.ascontiguousarray(turn(pixels)), spacing)
        turned[name] = other, trust.image_figures(_one(other.signals)) | {"sharpness": sharp}
        if trust.fits(turned[name][1]):
            return _oriented(name, *turned[name], pixels, first, force)
    why = trust.readable(figures)
    if why is None:
        why = (
            f"read, but unlike every training image (median confidence {figures['median_confidence']:.2f}, "
            f"usual from {trust.min_median_confidence:.2f}; median shape residual "
            f"{figures['median_residual_sd']:.1f} SD, usual to {trust.max_median_residual_sd:.1f}): "
            "check every landmark"
        )
        return Checked("unusual", why, figures, first, unusual=True)
    for name, (other, f) in turned.items():
        if trust.readable(f) is None:
            return _oriented(name, other, f, pixels, first, force, unusual=True)
    return Checked("not_a_lateral_cephalogram", why, figures, first if force else None, force)


def _oriented(name, other, figures, pixels, first, force, unusual=False) -> Checked:
    """The verdict of an image that reads in the orientation ``name`` of :data:`ORIENTATIONS`."""
    if ORIENTATIONS[name][1] == "mirrored":
        why = "facing left: read mirrored, points mapped back"
        why += "; unlike every training image: check every landmark" if unusual else ""
        return Checked("mirrored", why, figures, unmirror(other, pixels.shape[1]), unusual=unusual)
    turned = (360 - int(name.split()[1])) % 360  # the correction's opposite
    why = f"turned {turned} degrees counter-clockwise: turn it upright (facing right) and send it again"
    return Checked("rotated", why, figures, first if force else None, force)


def _one(signals: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    if signals is None:
        raise ValueError("the image verdict needs the reader's signals (a shape prior)")
    return {k: v[0] for k, v in signals.items()}
