"""Robustness: a model re-evaluated on the test images under controlled perturbations of the
**original** image (before preprocessing), several severities each (``robustness`` params).

Photometric: Gaussian noise (sd in grey levels of 255), gamma, contrast about the mean, blur
(sd in mm, so it means the same at any resolution) and JPEG re-compression (quality).
Geometric: rotation and scaling about the image centre, and a crop that cuts the same share
off every border; the landmarks go through the same transform, so the truth moves with the
image, and a scaled image's pixel spacing changes with it. Each perturbed set is scored with
arg-max decoding, and its per-image MRE compared with the clean images' (paired Wilcoxon).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from mahtnet.config import RobustnessParams
from mahtnet.data.preprocess import prepare_images

# name -> (params field, what a severity means)
PERTURBATIONS = {
    "noise": ("noise_sd", "Gaussian noise sd (grey levels of 255)"),
    "gamma": ("gamma", "gamma (output = input ** gamma)"),
    "contrast": ("contrast", "contrast factor about the image mean"),
    "blur": ("blur_mm", "Gaussian blur sd (mm)"),
    "jpeg": ("jpeg_quality", "JPEG quality"),
    "rotate": ("rotate_deg", "rotation about the centre (degrees)"),
    "scale": ("scale", "zoom about the centre"),
    "crop": ("crop_fraction", "share cut off every border"),
}


def _affine(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    h, w = image.shape
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def _centre_matrix(image: np.ndarray, angle: float, scale: float) -> np.ndarray:
    h, w = image.shape
    return cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)


def perturb(
    name: str,
    severity: float,
    image: np.ndarray,
    points: np.ndarray,
    spacing: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, float]:
    """One perturbed ``(image uint8, landmarks (K, 2) original px, spacing mm/px)``."""
    x = image.astype(np.float32)
    if name == "noise":
        x = x + rng.normal(0.0, severity, x.shape)
    elif name == "gamma":
        x = 255.0 * (x / 255.0) ** severity
    elif name == "contrast":
        x = x.mean() + severity * (x - x.mean())
    elif name == "blur":
        x = cv2.GaussianBlur(x, (0, 0), severity / spacing)
    elif name == "jpeg":
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(severity)])
        return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE), points, spacing
    elif name in ("rotate", "scale"):
        angle, zoom = (severity, 1.0) if name == "rotate" else (0.0, severity)
        m = _centre_matrix(image, angle, zoom)
        moved = points @ m[:, :2].T + m[:, 2]
        return _affine(image, m), moved, spacing / zoom
    elif name == "crop":
        h, w = image.shape
        dy, dx = round(severity * h), round(severity * w)
        return image[dy : h - dy, dx : w - dx].copy(), points - [dx, dy], spacing
    else:
        raise ValueError(f"unknown perturbation '{name}' (known: {', '.join(PERTURBATIONS)})")
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), points, spacing


def perturbed_set(samples, images: Sequence[np.ndarray], name: str, severity: float, size, seed: int):
    """The test split with every image perturbed, letterboxed to ``size``; the doctors'
    annotations follow the chosen ground truth's transform."""
    rng = np.random.default_rng(seed)
    out = [
        perturb(name, severity, im, s.landmarks, s.pixel_spacing_mm, rng)
        for s, im in zip(samples, images, strict=True)
    ]
    return prepare_images([s.image_id for s in samples], *zip(*out, strict=True), *size)


def severities(p: RobustnessParams) -> dict[str, list[float]]:
    return {name: list(getattr(p, field)) for name, (field, _) in PERTURBATIONS.items()}


def robustness(
    score: Callable[[Any], np.ndarray],
    samples,
    images: Sequence[np.ndarray],
    p: RobustnessParams,
    size: tuple[int, int],
    compare: Callable[[np.ndarray, np.ndarray], dict],
    desc: str = "robustness",
) -> dict[str, Any]:
    """``score(prepared set) -> errors (N, K) mm`` on the clean and every perturbed test set;
    ``compare(clean errors, perturbed errors)``: the paired test. Returns the clean scores and,
    per perturbation, one row per severity. On a terminal, a progress bar ``desc`` on stderr:
    one step per scored set."""
    levels_of = severities(p)
    total = 1 + sum(len(levels) for levels in levels_of.values())
    with tqdm(total=total, desc=desc, unit="set", disable=None) as bar:
        bar.set_postfix_str("clean")
        clean = score(prepare_images([s.image_id for s in samples], images, [s.landmarks for s in samples],
                                     [s.pixel_spacing_mm for s in samples], *size))  # fmt: skip
        bar.update()
        out: dict[str, Any] = {"clean": _row(clean), "perturbations": {}}
        for name, levels in levels_of.items():
            rows = []
            for severity in levels:
                bar.set_postfix_str(f"{name} {severity:g}")
                errors = score(perturbed_set(samples, images, name, severity, size, p.seed))
                test = compare(clean, errors)
                rows.append(
                    {
                        "severity": severity,
                        **_row(errors),
                        "mre_increase_mm": test["mre_diff"],
                        "wilcoxon_p": test["wilcoxon"]["p_value"],
                    }
                )
                bar.update()
            out["perturbations"][name] = {"meaning": PERTURBATIONS[name][1], "rows": rows}
    return out


def _row(errors: np.ndarray) -> dict[str, float]:
    return {
        "mre_mm": float(errors.mean()),
        "sdr_2mm": float(100 * (errors <= 2.0).mean()),
        "max_mm": float(errors.max()),
    }
