"""Reader for the ISBI 2015 cephalometric challenge layout.

::

    <root>/RawImage/{TrainingData,Test1Data,Test2Data}/NNN.jpg
    <root>/AnnotationsByMD/400_{senior,junior}/NNN.txt   (19 lines "x,y", px)

The synthetic generator writes the same layout (PNG images, plus ``dataset.yaml``
with its pixel spacing), so one reader serves both datasets.

Coordinates: ``(x, y)`` in original-image pixels, pixel centres at integer positions,
origin at the top-left pixel centre.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import yaml

from mahtnet.landmarks import NUM_LANDMARKS

ISBI_PIXEL_SPACING_MM = 0.1  # Wang et al. 2016, and the dataset README
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
GROUND_TRUTHS = ("mean", "senior", "junior")
DATASETS = ("isbi2015", "synthetic")


class DataError(ValueError):
    """Bad input data; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Sample:
    image_id: str
    image_path: Path
    landmarks: np.ndarray  # (K, 2) float64, original px, (x, y): the chosen ground truth
    pixel_spacing_mm: float
    senior: np.ndarray  # (K, 2) each doctor's annotation (inter-observer error, per-doctor scores)
    junior: np.ndarray


def read_annotation(path: str | Path) -> np.ndarray:
    """Landmarks ``(K, 2)`` from one annotation file; lines after the K-th are ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) < NUM_LANDMARKS:
        raise DataError(f"{path}: has {len(lines)} landmark lines, expected {NUM_LANDMARKS} ('x,y' each)")
    points = np.empty((NUM_LANDMARKS, 2), dtype=np.float64)
    for i, line in enumerate(lines[:NUM_LANDMARKS]):
        fields = line.replace(" ", "").split(",")
        try:
            if len(fields) != 2:
                raise ValueError
            points[i] = [float(fields[0]), float(fields[1])]
        except ValueError:
            raise DataError(f"{path}:{i + 1}: expected 'x,y', got {line!r}") from None
        if not np.all(np.isfinite(points[i])):
            raise DataError(f"{path}:{i + 1}: non-finite coordinate {line!r}")
    return points


def read_image(path: str | Path) -> np.ndarray:
    """Grayscale uint8 image ``(H, W)``; a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None or image.size == 0:
        raise DataError(f"unreadable or corrupt image: {path}")
    return image


def pixel_spacing(root: str | Path, dataset: str) -> float:
    """Pixel spacing (mm) of a dataset root."""
    root = Path(root)
    if dataset == "isbi2015":
        return ISBI_PIXEL_SPACING_MM
    if dataset == "synthetic":
        meta = root / "dataset.yaml"
        if not meta.is_file():
            raise FileNotFoundError(f"synthetic dataset description not found: {meta}")
        return float(yaml.safe_load(meta.read_text())["pixel_spacing_mm"])
    raise KeyError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")


def _find_image(split_dir: Path, image_id: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        candidate = split_dir / f"{image_id}{suffix}"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"image {image_id} not found in {split_dir}")


def ground_truth(senior: np.ndarray, junior: np.ndarray, gt: str) -> np.ndarray:
    """The ``senior`` or ``junior`` annotation, or their ``mean`` (the challenge's ground truth)."""
    if gt == "mean":
        return (senior + junior) / 2.0
    if gt == "senior":
        return senior
    if gt == "junior":
        return junior
    raise KeyError(f"unknown ground truth {gt!r}; valid: {', '.join(GROUND_TRUTHS)}")


def load_doctors(root: Path, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Both doctors' annotations of one image: ``(senior, junior)``."""
    ann = root / "AnnotationsByMD"
    return tuple(read_annotation(ann / f"400_{who}" / f"{image_id}.txt") for who in ("senior", "junior"))


def load_landmarks(root: Path, image_id: str, gt: str) -> np.ndarray:
    """Ground-truth landmarks of one image: ``senior``, ``junior`` or their ``mean``."""
    if gt not in GROUND_TRUTHS:
        raise KeyError(f"unknown ground truth {gt!r}; valid: {', '.join(GROUND_TRUTHS)}")
    return ground_truth(*load_doctors(root, image_id), gt)


def list_split(root: str | Path, split: str, gt: str = "mean", dataset: str = "isbi2015") -> list[Sample]:
    """All samples of one split, sorted by image id."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found: {root}")
    split_dir = root / "RawImage" / split
    if not split_dir.is_dir():
        present = sorted(p.name for p in (root / "RawImage").glob("*") if p.is_dir())
        raise FileNotFoundError(
            f"split '{split}' not found: {split_dir} (present: {', '.join(present) or 'none'})"
        )
    spacing = pixel_spacing(root, dataset)
    ids = sorted(p.stem for p in split_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not ids:
        raise DataError(f"no images in {split_dir}")
    if gt not in GROUND_TRUTHS:
        raise KeyError(f"unknown ground truth {gt!r}; valid: {', '.join(GROUND_TRUTHS)}")
    samples = []
    for i in ids:
        senior, junior = load_doctors(root, i)
        samples.append(
            Sample(i, _find_image(split_dir, i), ground_truth(senior, junior, gt), spacing, senior, junior)
        )
    return samples
