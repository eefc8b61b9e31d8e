"""The correction files of the review page, a clinic's landmarks as it places them: what
``mahtnet serve`` saves next to an X-ray and what ``mahtnet adapt`` learns from.

* ``scans/a.jpg.corrected.json`` -- the image, its size and pixel spacing, per landmark the
  corrected ``x_px``, ``y_px`` (and mm), whether it was ``moved`` and where the model had put it
  (``predicted_x_px``, ``predicted_y_px``), the measurements and the model that predicted;
* ``scans/a.jpg.corrected.txt`` -- the ISBI annotation format, 19 lines ``x,y``.

Written by :mod:`mahtnet.serve.review` (which re-exports these names), read here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from mahtnet.data.images import DataError
from mahtnet.landmarks import LANDMARK_NAMES, NUM_LANDMARKS

CORRECTED_JSON = ".corrected.json"
CORRECTED_TXT = ".corrected.txt"


def correction_paths(image: str | Path) -> tuple[Path, Path]:
    """``<image>.corrected.json`` and ``<image>.corrected.txt`` next to ``image``."""
    image = Path(image)
    return image.with_name(image.name + CORRECTED_JSON), image.with_name(image.name + CORRECTED_TXT)


def as_points(points: Any, what: str) -> np.ndarray:
    """``(19, 2)`` finite float64 from a list of ``[x, y]``; ``ValueError`` naming ``what``."""
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected {NUM_LANDMARKS} [x, y] pairs of numbers") from None
    if arr.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"{what}: expected {NUM_LANDMARKS} [x, y] pairs, got shape {list(arr.shape)}")
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:
        raise ValueError(f"{what}[{bad[0]}] ({LANDMARK_NAMES[bad[0]]}): not a finite number")
    return arr


@dataclasses.dataclass(frozen=True)
class Correction:
    """One corrected image, read back from its ``<image>.corrected.json``."""

    image: Path  # the X-ray (the JSON file's path without ".corrected.json")
    landmarks: np.ndarray  # (19, 2) float64, original px (x, y), ISBI order
    pixel_spacing_mm: float | None
    moved: np.ndarray  # (19,) bool: corrected by hand (False where unknown)
    file: Path  # the .corrected.json


def load_correction(path: str | Path) -> Correction:
    """The correction of an image: ``path`` is the image or its ``.corrected.json``. A missing
    file raises ``FileNotFoundError``, a damaged one :class:`~mahtnet.data.images.DataError`
    naming it."""
    path = Path(path)
    if not path.name.endswith(CORRECTED_JSON):
        path = correction_paths(path)[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: correction not found")
    try:
        doc = json.loads(path.read_text())
        rows = doc["landmarks"]
        names = [r["name"] for r in rows]
        if names != list(LANDMARK_NAMES):
            raise ValueError(f"landmarks are not the {NUM_LANDMARKS} ISBI landmarks in order")
        points = as_points([[r["x_px"], r["y_px"]] for r in rows], "landmarks")
        spacing = doc.get("pixel_spacing_mm")
        moved = np.array([bool(r.get("moved")) for r in rows])
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a correction file ({err})") from None
    image = path.with_name(path.name[: -len(CORRECTED_JSON)])
    return Correction(image, points, None if spacing is None else float(spacing), moved, path)


def load_corrections(folder: str | Path) -> dict[Path, Correction]:
    """Every correction under ``folder`` (recursively), by image path, sorted: the review's
    annotation set. ``{p: c.landmarks for p, c in load_corrections(f).items()}`` are the
    landmarks in the layout of :func:`mahtnet.data.isbi.read_annotation`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    found = sorted(folder.rglob(f"*{CORRECTED_JSON}"))
    return {c.image: c for c in (load_correction(p) for p in found)}
