"""Test-time augmentation (TTA) for landmark prediction.

Each transform is a 2x3 affine matrix ``A`` **about the image centre**: it acts on
coordinates relative to the centre ``c = ((W - 1) / 2, (H - 1) / 2)`` (the project's
convention, pixel centres at integers), so a point ``p`` (input px) goes to
``A[:, :2] @ (p - c) + A[:, 2] + c``. Centre-relative matrices do not depend on the image
size; :func:`about_centre` turns one into the pixel-space matrix ``M`` (``p -> M @ [p, 1]``)
of an image of a given size, which is what ``cv2.warpAffine`` gets (OpenCV also puts pixel
centres at integers).

:class:`mahtnet.decoding.LandmarkReader` warps the images with every transform, reads the
landmarks of each warped set, maps them back with the inverse transform and averages over
the transforms. Its cost is ``len(transforms)`` forward passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def tta_transforms(shifts_px: Sequence[float], scales: Sequence[float]) -> list[np.ndarray]:
    """Centre-relative 2x3 affine matrices, identity first: every combination of a scale from
    ``(1,) + scales`` and a shift from ``(0, 0)``, ``(+s, 0)``, ``(-s, 0)``, ``(0, +s)``,
    ``(0, -s)`` for each ``s`` in ``shifts_px`` (the shift is applied after the scaling, in
    input px). Repeated values (and a scale of 1) are dropped, so there are
    ``(1 + 4 * len(shifts_px)) * (1 + len(scales))`` matrices for distinct values."""
    shift_values = [float(s) for s in dict.fromkeys(shifts_px)]
    scale_values = [float(s) for s in dict.fromkeys(scales) if s != 1]
    if any(not np.isfinite(s) or s <= 0 for s in shift_values):
        raise ValueError(f"TTA shifts must be positive and finite, got {list(shifts_px)}")
    if any(not np.isfinite(s) or s <= 0 for s in scale_values):
        raise ValueError(f"TTA scales must be positive and finite, got {list(scales)}")
    offsets = [(0.0, 0.0)]
    for s in shift_values:
        offsets += [(s, 0.0), (-s, 0.0), (0.0, s), (0.0, -s)]
    return [
        np.array([[scale, 0.0, dx], [0.0, scale, dy]]) for scale in [1.0, *scale_values] for dx, dy in offsets
    ]


def check_transform(transform: np.ndarray) -> np.ndarray:
    a = np.asarray(transform, dtype=np.float64)
    if a.shape != (2, 3) or not np.all(np.isfinite(a)):
        raise ValueError(f"a TTA transform must be a finite 2x3 matrix, got {transform!r}")
    if abs(np.linalg.det(a[:, :2])) < 1e-12:
        raise ValueError(f"TTA transform is not invertible: {transform!r}")
    return a


def about_centre(transform: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-relative ``transform`` -> pixel-space 2x3 matrix for an image of ``size (H, W)``."""
    a = check_transform(transform)
    h, w = size
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    out = a.copy()
    out[:, 2] = a[:, 2] + c - a[:, :2] @ c
    return out


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine matrix (float64)."""
    a = check_transform(matrix)
    full = np.vstack([a, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points ``(..., 2)`` -> ``matrix @ [p, 1]`` ``(..., 2)`` float64."""
    m = np.asarray(matrix, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def warp_images(images: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``images (N, H, W)`` -> the same images warped by the pixel-space ``matrix`` (a point
    ``p`` of an input image lands on ``matrix @ [p, 1]``): bilinear, constant 0 border."""
    n, h, w = images.shape
    out = np.empty_like(images)
    m = np.asarray(matrix, dtype=np.float64)
    for i in range(n):
        out[i] = cv2.warpAffine(
            images[i], m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
    return out
