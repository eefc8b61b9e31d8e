"""Where corrections come from: a folder of the review page's ``<image>.corrected.json`` files
(:mod:`mahtnet.serve.review`), or of images each with an ISBI annotation ``<stem>.txt`` (19 lines
``x,y``, original px). Every check that needs only the files is made here, each a one-line
error naming the file: 19 finite landmarks, inside the image, one pixel spacing, no image twice.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from mahtnet.adapt.corrections import CORRECTED_JSON, as_points, load_correction
from mahtnet.data.images import XRAY_SUFFIXES, DataError, image_size
from mahtnet.data.isbi import read_annotation
from mahtnet.models.card import sha256

OUTSIDE_PX = 0.5  # a corrected landmark may lie this far outside the box of pixel centres


@dataclasses.dataclass(frozen=True)
class CorrectedImage:
    """One image of a clinic with its landmarks as the clinic places them."""

    image: Path
    corrected: np.ndarray  # (19, 2) original px
    predicted: np.ndarray | None  # (19, 2) where the model had put them (review page), or None
    pixel_spacing_mm: float | None
    file: Path  # the correction (or annotation) file
    image_sha256: str
    file_sha256: str


def _check_inside(points: np.ndarray, image: Path, file: Path) -> None:
    width, height = image_size(image)
    lo, hi = -OUTSIDE_PX, np.array([width - 1, height - 1]) + OUTSIDE_PX
    bad = np.flatnonzero(((points < lo) | (points > hi)).any(axis=1))
    if bad.size:
        x, y = points[bad[0]]
        raise DataError(
            f"{file}: landmark {bad[0] + 1} at ({x:.1f}, {y:.1f}) px lies outside the {width}x{height} image"
        )


def _from_review(path: Path) -> CorrectedImage:
    c = load_correction(path)
    if not c.image.is_file():
        raise FileNotFoundError(f"{path}: its image {c.image.name} is not beside it")
    doc = json.loads(path.read_text())
    if (doc.get("predicted_by") or {}).get("decoding") == "adapted":
        raise ValueError(
            f"{path}: corrected from an adapted model's points (they carry its offsets); correct with the "
            "base model served (the release), then adapt"
        )
    rows = doc["landmarks"]
    predicted = None
    if all(r.get("predicted_x_px") is not None for r in rows):
        predicted = as_points(
            [[r["predicted_x_px"], r["predicted_y_px"]] for r in rows], f"{path}: predicted"
        )
    _check_inside(c.landmarks, c.image, path)
    return CorrectedImage(
        c.image, c.landmarks, predicted, c.pixel_spacing_mm, path, sha256(c.image), sha256(path)
    )


def _is_prediction(path: Path) -> bool:
    """Whether ``path`` is a ``mahtnet predict`` output (its ``--isbi-txt`` file lies beside it:
    a prediction, not a correction)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "landmarks" in doc and "model" in doc


def _from_annotation(image: Path, txt: Path) -> CorrectedImage:
    points = read_annotation(txt)
    _check_inside(points, image, txt)
    return CorrectedImage(image, points, None, None, txt, sha256(image), sha256(txt))


def find(folder: str | Path, pixel_spacing_mm: float | None = None) -> list[CorrectedImage]:
    """Every correction under ``folder`` (recursively): review files first, then images with an
    annotation ``<stem>.txt`` and no review file. ``pixel_spacing_mm``: the spacing the corrections
    must share (given on the command line); a file that says another, or two files that differ,
    is an error. No correction at all, or one image twice (by content), is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of corrections")
    found = [_from_review(p) for p in sorted(folder.rglob(f"*{CORRECTED_JSON}"))]
    reviewed = {c.image.resolve() for c in found}
    for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in XRAY_SUFFIXES and p.is_file()):
        txt = image.with_suffix(".txt")
        if image.resolve() in reviewed or not txt.is_file() or _is_prediction(image.with_suffix(".json")):
            continue  # reviewed, no annotation, or the .txt is mahtnet predict's (--isbi-txt)
        found.append(_from_annotation(image, txt))
    if not found:
        raise FileNotFoundError(
            f"{folder}: no corrections (neither <image>{CORRECTED_JSON} files of the review page nor "
            "images with an ISBI <stem>.txt annotation)"
        )
    seen: dict[str, Path] = {}
    for c in found:
        if c.image_sha256 in seen:
            raise ValueError(f"{c.file}: the same image as {seen[c.image_sha256]} (duplicate correction)")
        seen[c.image_sha256] = c.file
    spacing = pixel_spacing_mm
    for c in found:
        if c.pixel_spacing_mm is None:
            continue
        if spacing is None:
            spacing = c.pixel_spacing_mm
        elif not np.isclose(c.pixel_spacing_mm, spacing, rtol=1e-6):
            raise ValueError(
                f"{c.file}: pixel spacing {c.pixel_spacing_mm} mm, but the corrections are at {spacing} mm"
            )
    if spacing is None:
        raise ValueError(
            f"{found[0].file}: no pixel spacing known; give --pixel-spacing (mm per pixel of these images)"
        )
    return [dataclasses.replace(c, pixel_spacing_mm=spacing) for c in found]


def check_predicted(c: CorrectedImage, model_points: np.ndarray, tolerance_px: float = 1.0) -> None:
    """The review file's predicted positions must be this model's: another base model's
    corrections would teach the wrong offsets."""
    if c.predicted is None:
        return
    gap = np.linalg.norm(np.asarray(model_points) - c.predicted, axis=1)
    if gap.max() > tolerance_px:
        k = int(gap.argmax())
        raise ValueError(
            f"{c.file}: made on another model (landmark {k + 1} was predicted {gap[k]:.1f} px from where "
            f"this base model puts it; more than {tolerance_px} px)"
        )
