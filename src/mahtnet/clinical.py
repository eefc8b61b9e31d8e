"""ISBI 2015 challenge task 2: clinical measurements and anatomical-type classification.

Pure NumPy, vectorised over images. Landmarks are ``(N, 19, 2)`` (x, y) in original image
pixels with y pointing DOWN and the face looking towards +x (the ISBI layout); ``L1..L19`` below
are the 1-based ISBI landmark numbers (see :mod:`mahtnet.landmarks`).

Sources
-------
* Wang et al. 2016, "A benchmark for comparison of dental radiography analysis algorithms",
  Medical Image Analysis 31:63-76: the table of the eight measurements of the ISBI 2015
  classification task (landmark-based definitions and class ranges). Its text was not
  retrievable here; the definitions were taken from and checked against the next source.
* The challenge's classification script as re-published in Python (ports of the organisers'
  evaluation logic): ``LucasL-3/Cephalometric-AI``, ``yolo-webapp/analysis.py`` (commit 5d2d555),
  and an identical, more verbose copy found by code search (it prints "1. ANB Value ... Type:
  3 - Class III (less than 3.2 degrees)"; repository name not shown by the index). Every
  definition, sign rule and boundary below follows that script.
* Kim's ODI / APDI sign conventions (palatal-plane angle negative when PP tips up anteriorly,
  AB-plane angle positive when B lies ahead of A), as summarised in Prog Orthod,
  doi:10.1186/s40510-016-0147-8, Table 2, agree with the script.

Definitions (challenge form; ``ang(u, v)`` is the unsigned angle between two vectors)
----------------------------------------------------------------------------------------
* SNA = angle L1-L2-L5, SNB = angle L1-L2-L6, ANB = SNA - SNB (signed; negative for Class III).
* ODI = ang(L8->L10, L6->L5) + s * ang(L4->L3, L17->L18), ``s = +1`` when the palatal plane
  (PNS->ANS) is rotated clockwise on screen relative to FH (Po->Or), i.e. ANS tips DOWN
  (image cross product >= 0), else ``-1``.
* APDI = ang(L3->L4, L2->L7)  (facial angle, FH vs N-Pog)
  + t * ang(L2->L7, L5->L6)   (AB vs facial plane; ``t = -1`` when cross(N->Pog, A->B) > 0,
  i.e. B behind the facial-plane direction, else ``+1``)
  + s * ang(L4->L3, L17->L18) (palatal plane vs FH, sign as in ODI).
* FHI = |L1 L10| / |L2 L8| (posterior / anterior face height, S-Go over N-Me).
* FMA = ang(L1->L2, L10->L9): despite its name the challenge uses the SN line against the
  mandibular plane Go-Gn (not Frankfort), so the thresholds below refer to SN-GoGn.
* MW: the challenge does not project A and B onto the occlusal plane; it uses the incisal tips:
  MW = |L11 L12| in mm, negative when x(L12) < x(L11) (upper incisor behind the lower one).

Classes (``classify``; boundaries inclusive in C1, exactly as in the challenge code)
-----------------------------------------------------------------------------------
====  ==============================  ===============================  ==============================
name  C1                              C2                               C3
====  ==============================  ===============================  ==============================
ANB   3.2-5.7 deg, Class I            > 5.7, Class II                  < 3.2, Class III
SNB   74.6-78.7 deg, normal mandible  < 74.6, retrognathic mandible    > 78.7, prognathic mandible
SNA   79.4-83.2 deg, normal maxilla   > 83.2, prognathic maxilla       < 79.4, retrognathic maxilla
ODI   68.4-80.5 deg, normal           > 80.5, deep bite tendency       < 68.4, open bite tendency
APDI  77.6-85.2 deg, normal           < 77.6, Class II tendency        > 85.2, Class III tendency
FHI   0.65-0.75, normal               > 0.75, short face tendency      < 0.65, long face tendency
FMA   26.8-31.4 deg, normal           > 31.4, high angle tendency      < 26.8, low angle tendency
MW    2-4.5 mm, normal                == 0 mm, edge to edge            otherwise, anterior cross bite
====  ==============================  ===============================  ==============================

MW has a fourth class in the paper and the challenge code: C4, MW > 4.5 mm, large overjet.
The paper's table leaves 0 < MW < 2 mm unassigned; the challenge code puts it in C3, and so do we.
The challenge code truncates coordinates to integers and uses 0.1 mm/px; here coordinates are
used as given and MW is scaled by ``spacing_mm``.
"""

from __future__ import annotations

import numpy as np

from mahtnet.landmarks import NUM_LANDMARKS

MEASUREMENTS: tuple[str, ...] = ("ANB", "SNB", "SNA", "ODI", "APDI", "FHI", "FMA", "MW")

# Zero-based indices of the landmarks used (ISBI number - 1).
S, N, OR, PO, A, B, POG, ME, GN, GO, LI, UI, PNS, ANS = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 16, 17

# (C1 low, C1 high, class below C1, class above C1) for the seven interval-type measurements.
THRESHOLDS: dict[str, tuple[float, float, int, int]] = {
    "ANB": (3.2, 5.7, 3, 2),
    "SNB": (74.6, 78.7, 2, 3),
    "SNA": (79.4, 83.2, 3, 2),
    "ODI": (68.4, 80.5, 3, 2),
    "APDI": (77.6, 85.2, 2, 3),
    "FHI": (0.65, 0.75, 3, 2),
    "FMA": (26.8, 31.4, 3, 2),
}
MW_NORMAL_MM = (2.0, 4.5)

CLASS_MEANINGS: dict[str, dict[int, str]] = {
    "ANB": {1: "Class I (normal)", 2: "Class II", 3: "Class III"},
    "SNB": {1: "normal mandible", 2: "retrognathic mandible", 3: "prognathic mandible"},
    "SNA": {1: "normal maxilla", 2: "prognathic maxilla", 3: "retrognathic maxilla"},
    "ODI": {1: "normal", 2: "deep bite tendency", 3: "open bite tendency"},
    "APDI": {1: "normal", 2: "Class II tendency", 3: "Class III tendency"},
    "FHI": {1: "normal", 2: "short face tendency", 3: "long face tendency"},
    "FMA": {1: "normal", 2: "mandible high angle tendency", 3: "mandible low angle tendency"},
    "MW": {1: "normal", 2: "edge to edge", 3: "anterior cross bite", 4: "large overjet"},
}


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """z of ``u x v`` for ``(..., 2)`` vectors; > 0 means ``v`` is clockwise of ``u`` on screen (y down)."""
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def vector_angle_deg(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Unsigned angle in degrees ``[0, 180]`` between vectors ``u, v (..., 2)``."""
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    dot = np.sum(u * v, axis=-1)
    return np.degrees(np.arctan2(np.abs(_cross(u, v)), dot))


def signed_angle_deg(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angle from ``u`` to ``v`` in degrees ``(-180, 180]``, positive when ``v`` is clockwise of ``u``
    on screen (image coordinates, y down)."""
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    return np.degrees(np.arctan2(_cross(u, v), np.sum(u * v, axis=-1)))


def angle_deg(p_vertex: np.ndarray, p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
    """Unsigned angle ``p1 - p_vertex - p2`` in degrees for points ``(..., 2)``."""
    p_vertex = np.asarray(p_vertex, dtype=np.float64)
    return vector_angle_deg(np.asarray(p1) - p_vertex, np.asarray(p2) - p_vertex)


def _as_batch(landmarks: np.ndarray) -> np.ndarray:
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim == 2:
        pts = pts[None]
    if pts.ndim != 3 or pts.shape[-1] != 2:
        expected = f"(N, {NUM_LANDMARKS}, 2) or ({NUM_LANDMARKS}, 2)"
        raise ValueError(f"landmarks must be {expected}, got {pts.shape}")
    if pts.shape[1] != NUM_LANDMARKS:
        raise ValueError(f"expected {NUM_LANDMARKS} landmarks (ISBI 2015 order), got {pts.shape[1]}")
    if not np.all(np.isfinite(pts)):
        raise ValueError("landmarks contain NaN or inf")
    return pts


def _palatal_fh_deg(p: np.ndarray) -> np.ndarray:
    """Palatal plane (PNS->ANS) vs FH (Po->Or), positive when ANS tips down (Kim's sign)."""
    fh, pp = p[:, OR] - p[:, PO], p[:, ANS] - p[:, PNS]
    return np.where(_cross(fh, pp) < 0, -1.0, 1.0) * vector_angle_deg(fh, pp)


def measurements(landmarks: np.ndarray, spacing_mm: float | np.ndarray = 0.1) -> dict[str, np.ndarray]:
    """The eight ISBI 2015 measurements, each ``(N,)``, from landmarks ``(N, 19, 2)`` or ``(19, 2)``
    (px, y down). Angles in degrees, FHI a ratio, MW in mm (``spacing_mm`` scalar or ``(N,)``)."""
    p = _as_batch(landmarks)
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (p.shape[0],))
    sna = angle_deg(p[:, N], p[:, S], p[:, A])
    snb = angle_deg(p[:, N], p[:, S], p[:, B])
    palatal = _palatal_fh_deg(p)
    odi = vector_angle_deg(p[:, GO] - p[:, ME], p[:, A] - p[:, B]) + palatal
    facial = p[:, POG] - p[:, N]
    ab = p[:, B] - p[:, A]
    ab_facial = np.where(_cross(facial, ab) > 0, -1.0, 1.0) * vector_angle_deg(facial, ab)
    apdi = vector_angle_deg(p[:, PO] - p[:, OR], facial) + ab_facial + palatal
    fhi = np.linalg.norm(p[:, GO] - p[:, S], axis=-1) / np.linalg.norm(p[:, ME] - p[:, N], axis=-1)
    fma = vector_angle_deg(p[:, N] - p[:, S], p[:, GN] - p[:, GO])
    mw_sign = np.where(p[:, UI, 0] < p[:, LI, 0], -1.0, 1.0)
    mw = mw_sign * np.linalg.norm(p[:, UI] - p[:, LI], axis=-1) * spacing
    values = (sna - snb, snb, sna, odi, apdi, fhi, fma, mw)
    return dict(zip(MEASUREMENTS, values, strict=True))


def classify(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Challenge class labels (int arrays: 1 = C1 normal, 2 = C2, 3 = C3; MW also 4 = large overjet)
    for each measurement present in ``values``."""
    unknown = set(values) - set(MEASUREMENTS)
    if unknown:
        raise KeyError(f"unknown measurements {sorted(unknown)}; valid: {', '.join(MEASUREMENTS)}")
    out = {}
    for name, raw in values.items():
        v = np.atleast_1d(np.asarray(raw, dtype=np.float64))
        if name == "MW":
            lo, hi = MW_NORMAL_MM
            labels = np.where(v == 0, 2, 3)
            labels = np.where(v >= lo, np.where(v <= hi, 1, 4), labels)
        else:
            lo, hi, below, above = THRESHOLDS[name]
            labels = np.where(v < lo, below, np.where(v > hi, above, 1))
        out[name] = labels.astype(np.int64)
    return out


def classification_accuracy(
    pred_landmarks: np.ndarray, gt_landmarks: np.ndarray, spacing_mm: float | np.ndarray = 0.1
) -> dict[str, float]:
    """Per measurement, % of images whose class from predicted landmarks equals the class from
    ground-truth landmarks; ``"mean"`` is the average over the eight measurements."""
    pred = _as_batch(pred_landmarks)
    gt = _as_batch(gt_landmarks)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} shapes differ")
    pc = classify(measurements(pred, spacing_mm))
    gc = classify(measurements(gt, spacing_mm))
    acc = {name: float(np.mean(pc[name] == gc[name]) * 100.0) for name in MEASUREMENTS}
    acc["mean"] = float(np.mean([acc[name] for name in MEASUREMENTS]))
    return acc
