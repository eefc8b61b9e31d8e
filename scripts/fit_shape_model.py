"""Fit the point-distribution shape model behind the synthetic cephalogram generator.

Reads the ISBI 2015 annotations of the official *training* images 001-150 only (never the
Test1 images 151-300), takes the mean of the senior and junior doctor as ground truth,
converts to mm (0.1 mm/px), removes translation and rotation by generalised Procrustes
alignment (scale is kept: anatomy size matters), and stores the mean shape and a PCA
covering ~98 % of the variance in ``src/mahtnet/data/shape_model.json``.

Usage::

    python scripts/fit_shape_model.py [--data ../shared/datasets/isbi2015] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
from pathlib import Path

import numpy as np

from mahtnet.landmarks import LANDMARK_NAMES, NUM_LANDMARKS

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "isbi2015"  # ../shared beside the clone
DEFAULT_OUT = ROOT / "src" / "mahtnet" / "data" / "shape_model.json"
PIXEL_SPACING_MM = 0.1
TRAIN_IDS = range(1, 151)
VARIANCE_KEPT = 0.98


def read_annotation(path: Path) -> np.ndarray:
    """The first 19 ``x,y`` lines of an ISBI annotation file as a (19, 2) float array."""
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        rows.append([float(v) for v in line.split(",")[:2]])
        if len(rows) == NUM_LANDMARKS:
            break
    if len(rows) != NUM_LANDMARKS:
        raise ValueError(f"{path}: expected {NUM_LANDMARKS} landmarks, got {len(rows)}")
    return np.asarray(rows, dtype=np.float64)


def rigid_align(shape: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float]:
    """Rotate a centred shape onto a centred target (no scaling); returns (aligned, angle)."""
    h = shape.T @ target
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(u @ vt))
    r = u @ np.diag([1.0, d]) @ vt
    angle = float(np.degrees(np.arctan2(r[0, 1], r[0, 0])))
    return shape @ r, angle


def procrustes(shapes: np.ndarray, iterations: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generalised Procrustes without scaling. Returns (aligned, translations, angles_deg)."""
    centroids = shapes.mean(axis=1)
    centred = shapes - centroids[:, None, :]
    mean = centred[0].copy()
    angles = np.zeros(len(shapes))
    aligned = centred.copy()
    for _ in range(iterations):
        for k, s in enumerate(centred):
            aligned[k], angles[k] = rigid_align(s, mean)
        new_mean = aligned.mean(axis=0)
        # Keep the mean in the orientation of the population (zero mean rotation).
        new_mean, _ = rigid_align(new_mean, centred.mean(axis=0))
        if np.allclose(new_mean, mean, atol=1e-9):
            break
        mean = new_mean
    return aligned, centroids, angles


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser


def load_training_shapes(data: Path) -> np.ndarray:
    """Mean of senior and junior annotations of the training images, in mm: (n, 19, 2)."""
    ann = data / "AnnotationsByMD"
    shapes = []
    for i in TRAIN_IDS:
        senior = read_annotation(ann / "400_senior" / f"{i:03d}.txt")
        junior = read_annotation(ann / "400_junior" / f"{i:03d}.txt")
        shapes.append(0.5 * (senior + junior) * PIXEL_SPACING_MM)
    return np.stack(shapes)


def fit_pca(aligned: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """PCA of the aligned shapes: (mean, modes, eigenvalues, cumulative fraction, n_modes)."""
    mean = aligned.mean(axis=0)
    flat = (aligned - mean).reshape(len(aligned), -1)
    cov = flat.T @ flat / (len(flat) - 1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    evals = np.clip(evals, 0.0, None)
    frac = np.cumsum(evals) / evals.sum()
    n_modes = int(np.searchsorted(frac, VARIANCE_KEPT) + 1)
    modes = evecs[:, :n_modes].T
    # Deterministic sign: largest-magnitude component positive.
    for m in modes:
        if m[np.argmax(np.abs(m))] < 0:
            m *= -1.0
    return mean, modes, evals, frac, n_modes


def provenance(n_shapes: int) -> dict:
    return {
        "source_dataset": "ISBI 2015 Grand Challenge, cephalometric X-ray landmark detection",
        "citation": (
            "Wang C.-W. et al., A benchmark for comparison of dental radiography analysis "
            "algorithms, Medical Image Analysis 31 (2016) 63-76"
        ),
        "images_used": "TrainingData 001-150",
        "n_shapes": n_shapes,
        "ground_truth": "mean of senior and junior",
        "pixel_spacing_mm": PIXEL_SPACING_MM,
        "alignment": "generalised Procrustes, translation and rotation removed, no scaling",
        "script": "scripts/fit_shape_model.py",
        "date": _dt.date.today().isoformat(),
    }


def shape_model_dict(shapes_mm: np.ndarray) -> tuple[dict, int, float]:
    """The shape model JSON content; also the number of modes and the variance they explain."""
    aligned, centroids, angles = procrustes(shapes_mm)
    mean, modes, evals, frac, n_modes = fit_pca(aligned)
    model = {
        "description": (
            "Point-distribution model of the 19 ISBI 2015 cephalometric landmarks in mm "
            "(x right, y down, face looking right), centred, rotation removed, scale kept. "
            "shape = mean_shape_mm + sum_m b_m * sqrt(variances[m]) * modes[m].reshape(19, 2)."
        ),
        "landmark_names": list(LANDMARK_NAMES),
        "units": "mm",
        "mean_shape_mm": np.round(mean, 4).tolist(),
        "modes": np.round(modes, 4).tolist(),
        "variances": np.round(evals[:n_modes], 4).tolist(),
        "variance_explained": round(float(frac[n_modes - 1]), 4),
        "total_variance_mm2": round(float(evals.sum()), 4),
        "pose": {
            "rotation_deg_sd": round(float(angles.std(ddof=1)), 4),
            "translation_mm_sd": np.round(centroids.std(axis=0, ddof=1), 4).tolist(),
            "translation_mm_mean": np.round(centroids.mean(axis=0), 4).tolist(),
        },
        "provenance": provenance(len(shapes_mm)),
    }
    return model, n_modes, frac[n_modes - 1]


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    model, n_modes, explained = shape_model_dict(load_training_shapes(args.data))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(model, indent=1) + "\n")
    print(
        f"wrote {args.out}: {n_modes} modes, {explained:.4f} variance, "
        f"rotation sd {model['pose']['rotation_deg_sd']} deg"
    )


if __name__ == "__main__":
    main()
