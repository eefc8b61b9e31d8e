"""Reviewing predictions: a folder of X-rays with their ``mahtnet predict`` outputs, the
corrections made on the review page, and reading those corrections back.

A correction of ``scans/a.jpg`` is saved next to the image, each file atomically (a temporary
file renamed into place, :func:`mahtnet.io.atomic_write`):

* ``scans/a.jpg.corrected.json`` -- the image, its size and pixel spacing, per landmark the
  corrected ``x_px``, ``y_px`` (and mm), whether it was ``moved`` and where the model had put it
  (``predicted_x_px``, ``predicted_y_px``), the ISBI task-2 measurements of the corrected
  landmarks (:func:`mahtnet.predict.result.measurement_report`), the model that made the prediction and
  the time of saving;
* ``scans/a.jpg.corrected.txt`` -- the ISBI annotation format, 19 lines ``x,y`` (integer px),
  which :func:`mahtnet.data.isbi.read_annotation` reads.

The model's own prediction (``<stem>.json``, written by ``mahtnet predict``) is never written
here. :func:`load_corrections` reads every ``*.corrected.json`` of a folder back as an annotation
set (image path -> ``(19, 2)`` landmarks in original pixels).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mahtnet.adapt.corrections import (  # noqa: F401  the file format lives with its reader, mahtnet adapt
    CORRECTED_JSON,
    CORRECTED_TXT,
    Correction,
    as_points,
    correction_paths,
    load_correction,
    load_corrections,
)
from mahtnet.data.images import XRAY_SUFFIXES
from mahtnet.decoding.trust import REFUSED
from mahtnet.io import write_text
from mahtnet.landmarks import LANDMARK_NAMES
from mahtnet.predict.result import measurement_report

CSV_COLUMNS = [
    "image",
    "landmark",
    "x_px",
    "y_px",
    "x_mm",
    "y_mm",
    "moved",
    "predicted_x_px",
    "predicted_y_px",
]
MOVED_PX = 1e-6  # a landmark farther than this from the model's position counts as moved


def refused(doc: dict[str, Any]) -> bool:
    """Whether a prediction document is an image its verdict refused (no landmarks; not forced)."""
    return doc.get("verdict") in REFUSED and not doc.get("forced") and not doc.get("landmarks")


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def correction_document(
    image: str,
    landmarks: np.ndarray,
    spacing_mm: float | None = None,
    spacing_source: str | None = None,
    width_px: int | None = None,
    height_px: int | None = None,
    predicted: np.ndarray | None = None,
    model: dict | None = None,
    decoding: str | None = None,
) -> dict[str, Any]:
    """The ``<image>.corrected.json`` document (also the JSON export) for corrected ``landmarks``
    ``(19, 2)`` original px; ``predicted``: where the model had put them (None: unknown)."""
    rows = []
    for k, (name, (x, y)) in enumerate(zip(LANDMARK_NAMES, landmarks, strict=True)):
        was = None if predicted is None else predicted[k]
        rows.append(
            {
                "name": name,
                "x_px": float(x),
                "y_px": float(y),
                "x_mm": None if spacing_mm is None else float(x * spacing_mm),
                "y_mm": None if spacing_mm is None else float(y * spacing_mm),
                "moved": None if was is None else bool(np.hypot(*(np.array([x, y]) - was)) > MOVED_PX),
                "predicted_x_px": None if was is None else float(was[0]),
                "predicted_y_px": None if was is None else float(was[1]),
            }
        )
    report = measurement_report(landmarks, spacing_mm)
    for m in report.values():
        if m["value"] is not None:
            m["value"] = _finite(m["value"])
    return {
        "image": image,
        "width_px": width_px,
        "height_px": height_px,
        "pixel_spacing_mm": spacing_mm,
        "pixel_spacing_source": spacing_source,
        "landmarks": rows,
        "measurements": report,
        "predicted_by": None if model is None else {"model": model, "decoding": decoding},
        "saved_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def isbi_txt(landmarks: np.ndarray) -> str:
    """19 lines ``x,y`` (integer px, rounded as ``mahtnet predict --isbi-txt`` does)."""
    return "".join(f"{round(float(x))},{round(float(y))}\n" for x, y in landmarks)


def correction_csv(doc: dict[str, Any]) -> str:
    """One row per landmark (:data:`CSV_COLUMNS`)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in doc["landmarks"]:
        writer.writerow(
            {"image": doc["image"], "landmark": row["name"], **{k: row[k] for k in CSV_COLUMNS[2:]}}
        )
    return out.getvalue()


def save_correction(image_path: Path, doc: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``<image>.corrected.json`` and ``.txt`` next to ``image_path``, each atomically."""
    json_path, txt_path = correction_paths(image_path)
    points = np.array([[r["x_px"], r["y_px"]] for r in doc["landmarks"]])
    write_text(json_path, json.dumps(doc, indent=2) + "\n")
    write_text(txt_path, isbi_txt(points))
    return json_path, txt_path


class ReviewDir:
    """The X-rays of a folder (recursively, by suffix, hidden files skipped), each known by its
    path relative to the folder, and the ``mahtnet predict`` output of each: ``<stem>.json`` in
    ``predictions`` (default: next to the image) whose ``image`` field names a file of the same
    name."""

    def __init__(self, root: str | Path, predictions: str | Path | None = None):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"{root}: --review-dir is not a folder")
        self.predictions = None if predictions is None else Path(predictions).resolve()
        if self.predictions is not None and not self.predictions.is_dir():
            raise FileNotFoundError(f"{predictions}: --review-predictions is not a folder")

    def images(self) -> dict[str, Path]:
        found = {}
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root)
            if any(part.startswith(".") for part in rel.parts) or p.suffix.lower() not in XRAY_SUFFIXES:
                continue
            if p.is_file():
                found[rel.as_posix()] = p
        return found

    def image(self, item_id: str) -> Path:
        """The image of ``item_id``; ``KeyError`` when the folder has no such image (ids are never
        used as paths: they are looked up among the folder's images)."""
        images = self.images()
        if item_id not in images:
            raise KeyError(item_id)
        return images[item_id]

    def prediction_path(self, image: Path) -> Path:
        return (self.predictions or image.parent) / f"{image.stem}.json"

    def prediction(self, image: Path) -> dict[str, Any] | None:
        """The saved prediction of ``image``, or None (none, unreadable, or made for another file);
        a refused image's (its verdict and no landmarks) included."""
        path = self.prediction_path(image)
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
            if not (isinstance(doc, dict) and refused(doc)):
                as_points([[r["x_px"], r["y_px"]] for r in doc["landmarks"]], "landmarks")
        except (ValueError, KeyError, TypeError):
            return None
        if Path(str(doc.get("image", ""))).name != image.name:
            return None
        return doc

    def summary(self) -> list[dict[str, Any]]:
        out = []
        for item_id, path in self.images().items():
            out.append(
                {
                    "id": item_id,
                    "prediction": self.prediction_path(path).is_file(),
                    "corrected": correction_paths(path)[0].is_file(),
                }
            )
        return out


def relative(paths: Sequence[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]
