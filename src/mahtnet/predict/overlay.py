"""The picture of a prediction: the X-ray with its landmarks, their names, confidence-coloured
markers, and the lines the ISBI task-2 measurements are made of (OpenCV: fast, no figure)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from mahtnet import clinical as c
from mahtnet.io import atomic_write

# Each measurement's lines, as landmark index pairs (0-based, see mahtnet.clinical).
MEASUREMENT_LINES: dict[str, tuple[tuple[int, int], ...]] = {
    "SNA/SNB/ANB": ((c.S, c.N), (c.N, c.A), (c.N, c.B)),
    "ODI": ((c.GO, c.ME), (c.A, c.B), (c.PO, c.OR), (c.PNS, c.ANS)),
    "APDI": ((c.N, c.POG),),
    "FHI": ((c.S, c.GO), (c.N, c.ME)),
    "FMA": ((c.GO, c.GN),),
    "MW": ((c.UI, c.LI),),
}
LINE_COLOUR = (255, 200, 0)  # BGR: light blue


def confidence_colour(confidence: float) -> tuple[int, int, int]:
    """BGR from red (0) through yellow (0.5) to green (>= 1)."""
    t = float(np.clip(confidence, 0.0, 1.0))
    return (0, int(255 * min(1.0, 2 * t)), int(255 * min(1.0, 2 * (1 - t))))


def draw_overlay(
    image: np.ndarray, landmarks: np.ndarray, names: Sequence[str], confidence: np.ndarray
) -> np.ndarray:
    """BGR ``(H, W, 3)``: ``image (H, W)`` uint8 with measurement lines, then markers and names."""
    out = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    unit = max(1, round(max(image.shape) / 600))  # line width and marker size scale with the image
    pts = np.round(landmarks).astype(int)
    for pairs in MEASUREMENT_LINES.values():
        for i, j in pairs:
            cv2.line(out, tuple(pts[i]), tuple(pts[j]), LINE_COLOUR, unit, cv2.LINE_AA)
    for (x, y), name, conf in zip(pts, names, confidence, strict=True):
        colour = confidence_colour(conf)
        cv2.circle(out, (x, y), 4 * unit, colour, -1, cv2.LINE_AA)
        cv2.circle(out, (x, y), 4 * unit, (0, 0, 0), max(1, unit // 2), cv2.LINE_AA)
        cv2.putText(
            out,
            name,
            (x + 6 * unit, y - 3 * unit),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4 * unit,
            colour,
            unit,
            cv2.LINE_AA,
        )
    return out


def write_overlay(path: str | Path, bgr: np.ndarray) -> Path:
    """PNG, written atomically."""
    ok, data = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError(f"{path}: could not encode the overlay")
    return atomic_write(path, lambda tmp: tmp.write_bytes(data.tobytes()))
