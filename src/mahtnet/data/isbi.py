"""Reader for the ISBI 2015 cephalometric challenge layout.

::

    <root>/RawImage/{TrainingData,Test1Data,Test2Data}/NNN.jpg
    <root>/AnnotationsByMD/400_{senior,junior}/NNN.txt   (19 lines "x,y", px)
    <root>/AnnotationsByMD/400_challenge/NNN.txt         (ISBI: the challenge's official ground truth)

The synthetic generator writes the same layout (PNG images, plus ``dataset.yaml``
with its pixel spacing), so one reader serves both datasets.

Coordinates: ``(x, y)`` in original-image pixels, pixel centres at integer positions,
origin at the top-left pixel centre.

:func:`list_split` checks every annotation against its image's size (read from the header): a
landmark may lie at most :data:`OUTSIDE_TOLERANCE` (2 %) of the image's larger side outside the
box of pixel centres (48 px = 4.8 mm on the 1935x2400 ISBI images, whose 600 annotations all lie
89 px or more inside it); a point farther out is an annotation error, e.g. a swapped or negated
coordinate, and raises :class:`DataError` naming the file and line.

Images are read by :func:`mahtnet.data.images.read_xray`, which refuses truncated files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import yaml

from mahtnet.data.images import DataError, image_size, read_xray  # DataError: also imported from here
from mahtnet.landmarks import LANDMARK_NAMES, NUM_LANDMARKS

ISBI_PIXEL_SPACING_MM = 0.1  # Wang et al. 2016, and the dataset README
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
GROUND_TRUTHS = ("mean", "senior", "junior", "challenge")
# training labels (``data.gt``): one ground truth, or ``doctors``: each time an image is drawn for
# training, one doctor's annotation at random (validation, shape prior: the mean of both)
LABELS = (*GROUND_TRUTHS, "doctors")
# the ground truth that published results are scored against: ISBI's ``400_challenge`` (the senior
# doctor on 001-300, on Test2 also but for landmark 16); the synthetic doctors are unbiased noisy
# copies of the generator's truth, so their mean is the best reference there
OFFICIAL_GT = {"isbi2015": "challenge", "synthetic": "mean"}
DATASETS = ("isbi2015", "synthetic")
OUTSIDE_TOLERANCE = 0.02  # how far (fraction of the image's larger side) a landmark may lie outside


@dataclasses.dataclass(frozen=True)
class Sample:
    image_id: str
    image_path: Path
    landmarks: np.ndarray  # (K, 2) float64, original px, (x, y): the training labels (data.gt)
    pixel_spacing_mm: float
    senior: np.ndarray  # (K, 2) each doctor's annotation (inter-observer error, per-doctor scores)
    junior: np.ndarray
    official: np.ndarray  # (K, 2) the dataset's official ground truth (OFFICIAL_GT): what is scored


def _landmark_lines(path: Path) -> list[tuple[int, str]]:
    """The non-blank lines of an annotation file with their 1-based line numbers."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    numbered = enumerate(path.read_text().splitlines(), start=1)
    return [(n, line.strip()) for n, line in numbered if line.strip()]


def read_annotation(path: str | Path) -> np.ndarray:
    """Landmarks ``(K, 2)`` from one annotation file; blank lines and lines after the K-th are
    ignored."""
    path = Path(path)
    lines = _landmark_lines(path)
    if len(lines) < NUM_LANDMARKS:
        raise DataError(f"{path}: has {len(lines)} landmark lines, expected {NUM_LANDMARKS} ('x,y' each)")
    points = np.empty((NUM_LANDMARKS, 2), dtype=np.float64)
    for i, (n, line) in enumerate(lines[:NUM_LANDMARKS]):
        fields = line.replace(" ", "").split(",")
        try:
            if len(fields) != 2:
                raise ValueError
            points[i] = [float(fields[0]), float(fields[1])]
        except ValueError:
            raise DataError(f"{path}:{n}: expected 'x,y', got {line!r}") from None
        if not np.all(np.isfinite(points[i])):
            raise DataError(f"{path}:{n}: non-finite coordinate {line!r}")
    return points


def check_inside(points: np.ndarray, ann_path: Path, image_path: Path) -> None:
    """Raise :class:`DataError` naming ``ann_path`` and the line of the first landmark farther
    than :data:`OUTSIDE_TOLERANCE` of the larger image side (Euclidean distance) outside the box of
    pixel centres of ``image_path``, whose size is read from its header."""
    width, height = image_size(image_path)
    tolerance = OUTSIDE_TOLERANCE * max(width, height)
    low, high = np.zeros(2), np.array([width - 1.0, height - 1.0])
    outside = np.hypot(*np.maximum(np.maximum(low - points, points - high), 0.0).T)
    far = np.flatnonzero(outside > tolerance)
    if far.size:
        k = int(far[0])
        line = _landmark_lines(ann_path)[k][0]
        x, y = points[k]
        raise DataError(
            f"{ann_path}:{line}: landmark {LANDMARK_NAMES[k]} at ({x:g}, {y:g}) lies outside the "
            f"{width}x{height} image {image_path} (tolerance {tolerance:g} px)"
        )


def read_image(path: str | Path) -> np.ndarray:
    """Grayscale uint8 image ``(H, W)`` (:func:`mahtnet.data.images.read_xray`): a missing file
    raises ``FileNotFoundError``, an unreadable or truncated one :class:`DataError`."""
    return read_xray(path).pixels


def pixel_spacing(root: str | Path, dataset: str) -> float:
    """Pixel spacing (mm) of a dataset root."""
    root = Path(root)
    if dataset == "isbi2015":
        return ISBI_PIXEL_SPACING_MM
    if dataset == "synthetic":
        meta = root / "dataset.yaml"
        if not meta.is_file():
            raise FileNotFoundError(f"{meta}: synthetic dataset description not found")
        return float(yaml.safe_load(meta.read_text())["pixel_spacing_mm"])
    raise KeyError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")


def _find_image(split_dir: Path, image_id: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        candidate = split_dir / f"{image_id}{suffix}"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"image {image_id} not found in {split_dir}")


def ground_truth(
    senior: np.ndarray, junior: np.ndarray, gt: str, challenge: np.ndarray | None = None
) -> np.ndarray:
    """The ``senior`` or ``junior`` annotation, their ``mean`` (also the central label of the
    ``doctors`` protocol), or the ``challenge``'s official ground truth (given)."""
    if gt in ("mean", "doctors"):
        return (senior + junior) / 2.0
    if gt == "senior":
        return senior
    if gt == "junior":
        return junior
    if gt == "challenge" and challenge is not None:
        return challenge
    if gt == "challenge":
        raise ValueError("ground truth 'challenge' needs the challenge's annotation")
    raise KeyError(f"unknown ground truth {gt!r}; valid: {', '.join(LABELS)}")


def annotation_path(root: Path, who: str, image_id: str) -> Path:
    """The annotation file of one doctor (``senior`` or ``junior``) for one image."""
    return root / "AnnotationsByMD" / f"400_{who}" / f"{image_id}.txt"


def load_doctors(root: Path, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Both doctors' annotations of one image: ``(senior, junior)``."""
    return tuple(read_annotation(annotation_path(root, who, image_id)) for who in ("senior", "junior"))


def load_challenge(root: Path, image_id: str) -> np.ndarray:
    """The challenge's official ground truth of one image (``400_challenge``); a missing folder is
    a clear error naming it."""
    folder = annotation_path(root, "challenge", image_id).parent
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: the challenge's official ground truth folder not found (needed for "
            "data.gt challenge and the official scores of ISBI 2015; see the dataset README)"
        )
    return read_annotation(annotation_path(root, "challenge", image_id))


def check_labels(gt: str) -> None:
    if gt not in LABELS:
        raise KeyError(f"unknown ground truth {gt!r}; valid: {', '.join(LABELS)}")


def load_landmarks(root: Path, image_id: str, gt: str) -> np.ndarray:
    """Ground-truth landmarks of one image: ``senior``, ``junior``, their ``mean`` or the
    ``challenge``'s."""
    check_labels(gt)
    challenge = load_challenge(root, image_id) if gt == "challenge" else None
    return ground_truth(*load_doctors(root, image_id), gt, challenge)


def _load_sample(root: Path, split_dir: Path, image_id: str, gt: str, dataset: str, spacing: float) -> Sample:
    senior, junior = load_doctors(root, image_id)
    image_path = _find_image(split_dir, image_id)
    official_gt = OFFICIAL_GT[dataset]
    need_challenge = "challenge" in (gt, official_gt)
    challenge = load_challenge(root, image_id) if need_challenge else None
    checked = (("senior", senior), ("junior", junior)) + (
        (("challenge", challenge),) if need_challenge else ()
    )
    for who, points in checked:
        check_inside(points, annotation_path(root, who, image_id), image_path)
    labels = ground_truth(senior, junior, gt, challenge)
    official = ground_truth(senior, junior, official_gt, challenge)
    return Sample(image_id, image_path, labels, spacing, senior, junior, official)


def split_list_file(root: Path, split: str) -> Path | None:
    """The id list of a split given as a list file (``cv4/set1/train`` -> ``<root>/cv4/set1/train.txt``:
    image ids one per line, the images in any ``RawImage`` folder), or None for a ``RawImage`` folder."""
    path = root / f"{split}.txt"
    return path if "/" in split and path.is_file() else None


def _listed_split(root: Path, listing: Path, gt: str, dataset: str, spacing: float) -> list[Sample]:
    """The samples of the image ids listed in ``listing`` (e.g. a cross-validation fold)."""
    ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{listing}: no image ids")
    if len(set(ids)) != len(ids):
        raise DataError(f"{listing}: repeated image ids")
    folders = sorted(p for p in (root / "RawImage").glob("*") if p.is_dir())
    where = {}
    for folder in folders:
        for path in folder.iterdir():
            if path.suffix.lower() in IMAGE_SUFFIXES:
                where.setdefault(path.stem, folder)
    missing = [i for i in ids if i not in where]
    if missing:
        raise DataError(
            f"{listing}: image {missing[0]} not found under {root / 'RawImage'} ({len(missing)} missing)"
        )
    check_labels(gt)
    return [_load_sample(root, where[i], i, gt, dataset, spacing) for i in sorted(ids)]


def list_split(root: str | Path, split: str, gt: str = "mean", dataset: str = "isbi2015") -> list[Sample]:
    """All samples of one split, sorted by image id; every annotation checked against its image's
    size (:func:`check_inside`). ``split`` is a ``RawImage`` folder (``TrainingData``) or a list
    file of image ids under ``root`` without its ``.txt`` (``cv4/set1/train``: a fold of the
    4-fold cross-validation split, :func:`split_list_file`)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset root not found")
    listing = split_list_file(root, split)
    if listing is not None:
        return _listed_split(root, listing, gt, dataset, pixel_spacing(root, dataset))
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
    check_labels(gt)
    return [_load_sample(root, split_dir, i, gt, dataset, spacing) for i in ids]
