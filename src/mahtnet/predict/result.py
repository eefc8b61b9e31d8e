"""Landmarks of new X-rays: any trained model (a checkpoint or its ONNX export, with its shape
prior, refiner and calibration) on image files that carry no annotation.

The landmarks are read by a :class:`mahtnet.decoding.LandmarkReader` (PyTorch or onnxruntime
backends; with ONNX files only, PyTorch is not imported): the arg-max, then, where the pixel
spacing is known, shape-consistent decoding and the refiner. The confidence is the reader's
(peak probability / the training target's peak); ``low_confidence`` flags confidences below
:data:`mahtnet.decoding.recipe.LOW_CONFIDENCE` (see ``docs/predict.md`` for how it relates to the error).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mahtnet import clinical
from mahtnet.data.images import XRay
from mahtnet.decoding import LandmarkReader
from mahtnet.decoding.recipe import DECODING_NAMES, LOW_CONFIDENCE
from mahtnet.decoding.trust import REFUSED, TrustModel, read_checked
from mahtnet.models.card import ModelCard


@dataclasses.dataclass
class Prediction:
    """The landmarks of one X-ray (original px), their confidence, and how they were read."""

    xray: XRay
    spacing_mm: float | None
    spacing_source: str | None
    landmarks: np.ndarray  # (K, 2) original px (x, y)
    confidence: np.ndarray  # (K,) peak / target peak (mahtnet.decoding.reader)
    decoding: str  # arg-max | shape-consistent | refined | adapted
    expected_error_mm: np.ndarray | None = None  # (K,) with a calibration, else the trust block's
    verdict: str = "unchecked"  # mahtnet.decoding.trust.VERDICTS; unchecked: the model has no trust block
    verdict_reason: str | None = None
    forced: bool = False  # a refused image read anyway (--force)
    check_first: np.ndarray | None = None  # (K,) bool: the trust block's flags
    error_bound_mm: np.ndarray | None = None  # (K,) the trust block's bound (its coverage)
    coverage: float | None = None
    members_spread_mm: np.ndarray | None = None  # (K,) an ensemble's members' disagreement

    @property
    def refused(self) -> bool:
        return self.verdict in REFUSED and not self.forced


def resolve_spacing(xray: XRay, override_mm: float | None) -> tuple[float | None, str | None]:
    """An explicit ``--pixel-spacing`` wins over the file's own; None when neither says."""
    if override_mm is not None:
        if not (override_mm > 0 and math.isfinite(override_mm)):
            raise ValueError(f"--pixel-spacing: must be a positive number of mm, got {override_mm}")
        return float(override_mm), "--pixel-spacing"
    return xray.spacing_mm, xray.spacing_source


def predict_xrays(
    reader: LandmarkReader,
    xrays: Sequence[XRay],
    pixel_spacing_mm: float | None = None,
    trust: TrustModel | None = None,
    force: bool = False,
) -> list[Prediction]:
    """Landmarks of a batch of X-rays through ``reader``: shape decoding and the refiner (when
    the reader has them) where the pixel spacing is known, the arg-max elsewhere. With a
    ``trust`` block (the model card's), each image gets its verdict first
    (:func:`mahtnet.decoding.trust.read_checked`): a refused image has no landmarks unless
    ``force``; each landmark its flag, expected error and bound."""
    spacing = [resolve_spacing(x, pixel_spacing_mm) for x in xrays]
    if trust is None:
        out = reader.read_images([x.pixels for x in xrays], [s for s, _ in spacing])
        expected = out.expected_error_mm if out.expected_error_mm is not None else [None] * len(xrays)
        return [
            Prediction(x, s, src, c, p, DECODING_NAMES[d], e)
            for x, (s, src), c, p, d, e in zip(
                xrays, spacing, out.final, out.confidence, out.decoding, expected, strict=True
            )
        ]
    return [_checked(reader, trust, x, s, src, force) for x, (s, src) in zip(xrays, spacing, strict=True)]


def _checked(reader, trust: TrustModel, x: XRay, s: float | None, src: str | None, force: bool) -> Prediction:
    c = read_checked(lambda px, sp: reader.read_images([px], [sp]), trust, x.pixels, s, force)
    if c.readout is None:
        return Prediction(x, s, src, np.empty((0, 2)), np.empty(0), "none", None, c.verdict, c.reason)
    out = c.readout
    p = Prediction(
        x,
        s,
        src,
        out.final[0],
        out.confidence[0],
        DECODING_NAMES[out.decoding[0]],
        None,
        c.verdict,
        c.reason,
        c.forced,
    )
    if c.forced or s is None:  # the bound and flags hold for accepted readings with a known spacing
        return p
    expected, bound = trust.bounds()
    if out.expected_error_mm is not None:
        expected = out.expected_error_mm[0]
    signals = {k: v[0] for k, v in out.signals.items()}
    flags = trust.check_first(c.unusual, signals, out.confidence[0])
    return dataclasses.replace(
        p,
        expected_error_mm=expected,
        check_first=flags,
        error_bound_mm=bound,
        coverage=trust.coverage,
        members_spread_mm=signals.get("members_spread_mm"),
    )


def measurement_report(landmarks: np.ndarray, spacing_mm: float | None) -> dict[str, dict]:
    """The ISBI task-2 measurements with their classes. Angles and FHI need no spacing; MW
    (mm) is null without it."""
    values = clinical.measurements(landmarks, 1.0 if spacing_mm is None else spacing_mm)
    classes = clinical.classify(values)
    out = {}
    for name in clinical.MEASUREMENTS:
        if name == "MW" and spacing_mm is None:
            out[name] = {"value": None, "unit": "mm", "class": None, "meaning": None}
            continue
        c = int(classes[name][0])
        unit = {"FHI": "ratio", "MW": "mm"}.get(name, "deg")
        out[name] = {
            "value": float(values[name][0]),
            "unit": unit,
            "class": c,
            "meaning": clinical.CLASS_MEANINGS[name][c],
        }
    return out


def to_json(p: Prediction, card: ModelCard, threshold: float | None = None) -> dict[str, Any]:
    """The per-image result document (``<name>.json``): the image's ``verdict`` first; per
    landmark the position, the confidence (peak / target peak, capped at 1), ``low_confidence``
    (below ``threshold``, default the decoding's :data:`LOW_CONFIDENCE`), and where known the
    expected error, the error bound, ``check_first`` and an ensemble's ``members_spread_mm``
    (the members' mean distance from their mean point). A refused image (not forced) has no
    landmarks and no measurements."""
    h, w = p.xray.pixels.shape
    head = {
        "image": str(p.xray.path),
        "width_px": int(w),
        "height_px": int(h),
        "pixel_spacing_mm": p.spacing_mm,
        "pixel_spacing_source": p.spacing_source,
        "verdict": p.verdict,
        "verdict_reason": p.verdict_reason,
        "forced": p.forced,
    }
    if p.refused:
        return {**head, "decoding": None, "landmarks": [], "measurements": None, "model": card.to_dict()}
    threshold = LOW_CONFIDENCE[p.decoding] if threshold is None else threshold
    rows = []
    expected, bound, flags, spread = p.expected_error_mm, p.error_bound_mm, p.check_first, p.members_spread_mm
    for k, (name, (x, y), c) in enumerate(zip(card.landmark_names, p.landmarks, p.confidence, strict=True)):
        mm = None if p.spacing_mm is None else (float(x * p.spacing_mm), float(y * p.spacing_mm))
        rows.append(
            {
                "name": name,
                "x_px": float(x),
                "y_px": float(y),
                "x_mm": None if mm is None else mm[0],
                "y_mm": None if mm is None else mm[1],
                "confidence": min(float(c), 1.0),
                "low_confidence": bool(c < threshold),
                **({} if expected is None else {"expected_error_mm": float(expected[k])}),
                **({} if bound is None else {"error_bound_mm": float(bound[k])}),
                **({} if flags is None else {"check_first": bool(flags[k])}),
                **({} if spread is None else {"members_spread_mm": float(spread[k])}),
            }
        )
    order = [] if flags is None else sorted(np.flatnonzero(flags), key=lambda k: float(p.confidence[k]))
    return {
        **head,
        "decoding": p.decoding,
        "low_confidence_threshold": threshold,
        **({} if p.coverage is None or bound is None else {"error_bound_coverage": p.coverage}),
        **({} if flags is None else {"check_first": [card.landmark_names[k] for k in order]}),
        "landmarks": rows,
        "measurements": measurement_report(p.landmarks, p.spacing_mm),
        "model": card.to_dict(),
    }


def isbi_text(p: Prediction) -> str:
    """The ISBI 2015 annotation format: 19 lines ``x,y`` (integer original px)."""
    return "".join(f"{round(x)},{round(y)}\n" for x, y in p.landmarks)
