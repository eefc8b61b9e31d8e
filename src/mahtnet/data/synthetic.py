"""Deterministic synthetic lateral cephalograms: the repository's embedded default dataset.

Landmarks are drawn from a point-distribution model (``shape_model.json``, fitted by
``scripts/fit_shape_model.py`` on the ISBI 2015 training annotations 001-150), posed randomly
and rendered as an X-ray-like grayscale image in which every one of the 19 landmarks lies on a
visible, sharply drawn structure (bone contour, tooth tip, soft-tissue profile, ear rod ring).

Coordinates: x to the right, y down, the face looks to the right. Pixel ``(i, j)`` (row,
column) has its centre at ``x = j, y = i`` (pixel-centre convention, as in OpenCV drawing).
A physical position ``x_mm`` measured from the left image *edge* maps to
``x_px = x_mm / pixel_spacing_mm - 0.5``.

:func:`generate_dataset` writes the official ISBI 2015 layout (``RawImage/TrainingData``,
``RawImage/Test1Data``, ``AnnotationsByMD/400_senior|400_junior``) so the same loader reads
the real and the synthetic data. Everything is a pure function of the seed: the same
arguments give byte-identical files.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import yaml

from mahtnet.landmarks import LANDMARK_NAMES, NUM_LANDMARKS

__all__ = [
    "generate_dataset",
    "generate_sample",
    "load_shape_model",
    "render_cephalogram",
    "sample_landmarks",
]

SHAPE_MODEL_PATH = Path(__file__).with_name("shape_model.json")

# Landmark indices (0-based, annotation-file order).
S, N, OR, PO, A, B, POG, ME, GN, GO, L1, U1, UL, LL, SN, SPOG, PNS, ANS, AR = range(19)

# Where the landmark centroid sits in the image, as a fraction of width/height (mean position
# of the centroid in the ISBI training images: 123.5 mm of 193.5 mm, 158.4 mm of 240 mm).
_CENTROID_FRAC = (0.638, 0.660)
_MARGIN_FRAC = 0.10  # landmarks are kept at least this far from every border (>= 8 % asked)

_SUPERSAMPLE = 2  # rendering at 2x then area-averaging gives clean sub-pixel edges
_SHIFT = 4  # sub-pixel bits for cv2 drawing
_FILL_DILATION = 0.65  # supersampled px by which cv2.fillPoly(LINE_AA) grows a shape


# --------------------------------------------------------------------------------------------
# shape model and landmarks
# --------------------------------------------------------------------------------------------


def load_shape_model() -> dict:
    """Read ``shape_model.json`` (next to this module) and return it as a dict.

    ``mean_shape_mm`` (19, 2), ``modes`` (M, 38) and ``variances`` (M,) are converted to numpy
    arrays; the other entries (``landmark_names``, ``provenance``, ...) are left as read.
    """
    model = json.loads(SHAPE_MODEL_PATH.read_text())
    model["mean_shape_mm"] = np.asarray(model["mean_shape_mm"], dtype=np.float64)
    model["modes"] = np.asarray(model["modes"], dtype=np.float64)
    model["variances"] = np.asarray(model["variances"], dtype=np.float64)
    if model["mean_shape_mm"].shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"shape model: mean shape {model['mean_shape_mm'].shape}")
    return model


def sample_landmarks(rng: np.random.Generator, shape_model: dict, mode_sd_clip: float = 2.5) -> np.ndarray:
    """Draw one landmark configuration from the point-distribution model.

    ``shape = mean + sum_m b_m * sqrt(lambda_m) * mode_m`` with ``b_m ~ N(0, 1)`` clipped to
    ``[-mode_sd_clip, mode_sd_clip]``. Returns a (19, 2) float array in mm, centred on the
    landmark centroid, in the model's (pose-free) orientation.
    """
    mean = np.asarray(shape_model["mean_shape_mm"], dtype=np.float64)
    modes = np.asarray(shape_model["modes"], dtype=np.float64)
    variances = np.asarray(shape_model["variances"], dtype=np.float64)
    b = np.clip(rng.standard_normal(len(variances)), -mode_sd_clip, mode_sd_clip)
    shape = mean + ((b * np.sqrt(variances)) @ modes).reshape(mean.shape)
    return shape - shape.mean(axis=0)


def _pose_landmarks(
    rng: np.random.Generator,
    shape_mm: np.ndarray,
    width: int,
    height: int,
    pixel_spacing_mm: float,
    pose_rotation_deg: float,
    pose_scale: float,
    pose_shift_mm: float,
) -> np.ndarray:
    """Rotate/scale/shift a centred mm shape and place it in the image; returns pixels."""
    angle = np.radians(rng.uniform(-pose_rotation_deg, pose_rotation_deg))
    scale = rng.uniform(1.0 - pose_scale, 1.0 + pose_scale)
    shift = rng.uniform(-pose_shift_mm, pose_shift_mm, size=2)
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    pts = scale * shape_mm @ rot.T
    size_mm = np.array([width, height], dtype=np.float64) * pixel_spacing_mm
    pts = pts + size_mm * np.asarray(_CENTROID_FRAC) + shift
    # Keep every landmark inside the margin box (shift back; shrink only if it cannot fit).
    lo, hi = size_mm * _MARGIN_FRAC, size_mm * (1.0 - _MARGIN_FRAC)
    extent = pts.max(axis=0) - pts.min(axis=0)
    if np.any(extent > hi - lo):
        factor = float(np.min((hi - lo) / extent)) * 0.98
        centre = pts.mean(axis=0)
        pts = centre + (pts - centre) * factor
    pts = pts + np.maximum(lo - pts.min(axis=0), 0.0) - np.maximum(pts.max(axis=0) - hi, 0.0)
    return pts / pixel_spacing_mm - 0.5


# --------------------------------------------------------------------------------------------
# geometry helpers
# --------------------------------------------------------------------------------------------


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-12)


def _perp(v: np.ndarray) -> np.ndarray:
    """``v`` rotated by +90 degrees in image coordinates (forward -> down)."""
    return np.array([-v[1], v[0]])


def _catmull_rom(points: np.ndarray, closed: bool = False, step: float = 1.0) -> np.ndarray:
    """Centripetal Catmull-Rom spline through ``points`` sampled every ~``step`` units."""
    p = np.asarray(points, dtype=np.float64)
    head, tail = (p[-1:], p[:2]) if closed else (2 * p[:1] - p[1:2], 2 * p[-1:] - p[-2:-1])
    ext = np.vstack([head, p, tail])
    out = []
    for i in range(len(ext) - 3):
        p0, p1, p2, p3 = ext[i : i + 4]
        d01 = max(np.linalg.norm(p1 - p0), 1e-6) ** 0.5
        d12 = max(np.linalg.norm(p2 - p1), 1e-6) ** 0.5
        d23 = max(np.linalg.norm(p3 - p2), 1e-6) ** 0.5
        t0, t1 = 0.0, d01
        t2, t3 = t1 + d12, t1 + d12 + d23
        n = max(2, int(np.ceil(np.linalg.norm(p2 - p1) / step)))
        t = np.linspace(t1, t2, n, endpoint=False)[:, None]
        a1 = (t1 - t) / (t1 - t0) * p0 + (t - t0) / (t1 - t0) * p1
        a2 = (t2 - t) / (t2 - t1) * p1 + (t - t1) / (t2 - t1) * p2
        a3 = (t3 - t) / (t3 - t2) * p2 + (t - t2) / (t3 - t2) * p3
        b1 = (t2 - t) / (t2 - t0) * a1 + (t - t0) / (t2 - t0) * a2
        b2 = (t3 - t) / (t3 - t1) * a2 + (t - t1) / (t3 - t1) * a3
        out.append((t2 - t) / (t2 - t1) * b1 + (t - t1) / (t2 - t1) * b2)
    if not closed:
        out.append(p[-1:])
    return np.vstack(out)


def _normals(curve: np.ndarray) -> np.ndarray:
    """Unit normals (tangent rotated by +90 degrees) of a polyline."""
    tangent = np.gradient(curve, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-12
    return np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)


def _band(curve: np.ndarray, thickness: np.ndarray, towards: np.ndarray) -> np.ndarray:
    """Polygon of a band whose one border is ``curve``; it grows ``thickness`` towards a point."""
    nrm = _normals(curve)
    sign = np.sign(np.sum(nrm * (towards - curve), axis=1, keepdims=True))
    sign[sign == 0] = 1.0
    inner = curve + nrm * sign * np.asarray(thickness, dtype=np.float64)[:, None]
    return np.vstack([curve, inner[::-1]])


def _ellipse(centre: np.ndarray, rx: float, ry: float, u: np.ndarray, n: int = 72) -> np.ndarray:
    """Ellipse with semi-axis ``rx`` along unit vector ``u`` and ``ry`` along ``perp(u)``."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)[:, None]
    return centre + rx * np.cos(t) * u + ry * np.sin(t) * _perp(u)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth random field (bicubic upsampling of a coarse grid)."""
    h, w = shape
    gh = max(2, int(round(cells * h / max(h, w))))
    gw = max(2, int(round(cells * w / max(h, w))))
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


class _Canvas:
    """Float density map drawn with anti-aliased, sub-pixel cv2 primitives at supersampling."""

    def __init__(self, width: int, height: int, k: int = _SUPERSAMPLE) -> None:
        self.k = k
        self.w, self.h = width * k, height * k
        self.soft = np.zeros((self.h, self.w), np.float32)
        self.bone = np.zeros((self.h, self.w), np.float32)

    def _to_pts(self, pts: np.ndarray) -> np.ndarray:
        hi = (np.asarray(pts, dtype=np.float64) + 0.5) * self.k - 0.5
        return np.round(hi * (1 << _SHIFT)).astype(np.int32)

    def _stamp(self, target: np.ndarray, polys: list[np.ndarray], value: float, draw) -> None:
        allp = np.vstack(polys)
        pad = 4 * self.k + 8
        hi = (allp + 0.5) * self.k - 0.5
        x0 = max(int(np.floor(hi[:, 0].min())) - pad, 0)
        y0 = max(int(np.floor(hi[:, 1].min())) - pad, 0)
        x1 = min(int(np.ceil(hi[:, 0].max())) + pad, self.w)
        y1 = min(int(np.ceil(hi[:, 1].max())) + pad, self.h)
        if x1 <= x0 or y1 <= y0:
            return
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        off = np.array([x0, y0], dtype=np.int32) << _SHIFT
        draw(mask, [self._to_pts(p) - off for p in polys])
        target[y0:y1, x0:x1] += mask.astype(np.float32) * np.float32(value / 255.0)

    def fill(self, polys, value: float, layer: str = "bone") -> None:
        polys = [np.asarray(p) for p in (polys if isinstance(polys, list) else [polys])]
        # cv2.fillPoly also covers the pixels the border touches, which dilates every shape by
        # ~0.65 supersampled px; move the vertices inwards by that much so edges stay unbiased.
        polys = [_shrink(p, _FILL_DILATION / self.k) for p in polys]
        self._stamp(
            getattr(self, layer),
            polys,
            value,
            lambda m, pts: cv2.fillPoly(m, pts, 255, cv2.LINE_AA, _SHIFT),
        )

    def line(
        self,
        pts: np.ndarray,
        thickness_px: float,
        value: float,
        closed: bool = False,
        layer: str = "bone",
    ) -> None:
        t = max(1, int(round(thickness_px * self.k)))
        self._stamp(
            getattr(self, layer),
            [np.asarray(pts)],
            value,
            lambda m, p: cv2.polylines(m, p, closed, 255, t, cv2.LINE_AA, _SHIFT),
        )

    def downsample(self, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        soft = cv2.resize(self.soft, (width, height), interpolation=cv2.INTER_AREA)
        bone = cv2.resize(self.bone, (width, height), interpolation=cv2.INTER_AREA)
        return soft, bone


def _shrink(poly: np.ndarray, delta: float) -> np.ndarray:
    """Move the vertices of a closed polygon ``delta`` inwards along their normals."""
    p = np.asarray(poly, dtype=np.float64)
    if len(p) < 3:
        return p
    edge = np.roll(p, -1, axis=0) - p  # edge i: vertex i -> i + 1
    edge /= np.linalg.norm(edge, axis=1, keepdims=True) + 1e-12
    n_out = np.stack([-edge[:, 1], edge[:, 0]], axis=1)  # +90 degrees
    n_in = np.roll(n_out, 1, axis=0)  # normal of the edge arriving at each vertex
    x, y = p[:, 0], p[:, 1]
    area2 = np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
    # with y down, +90-degree normals point inwards for a positive signed area
    sign = 1.0 if area2 > 0 else -1.0
    miter = (n_out + n_in) / np.maximum(1.0 + np.sum(n_out * n_in, axis=1, keepdims=True), 0.2)
    return p + sign * delta * miter


def _min_distance(poly: np.ndarray, points: np.ndarray) -> float:
    """Smallest distance from ``points`` to a closed polygon (negative if a point is inside)."""
    contour = np.asarray(poly, dtype=np.float32).reshape(-1, 1, 2)
    d = [-cv2.pointPolygonTest(contour, (float(x), float(y)), True) for x, y in points]
    return float(min(d))


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------


class _Frame(NamedTuple):
    """Per-image geometry shared by the drawing steps (pixels; direction vectors are unit)."""

    L: np.ndarray  # (19, 2) landmarks in pixels
    mm: float  # px per mm
    f: np.ndarray  # head forward: Frankfort horizontal, porion -> orbitale
    d: np.ndarray  # down: ``f`` rotated by +90 degrees
    u_sn: np.ndarray  # sella -> nasion
    v_sn: np.ndarray  # ``u_sn`` rotated by +90 degrees
    sc: float  # S-N length relative to the mean S-N length of the shape model

    def at(self, base: np.ndarray, a: float, b: float, fu=None, fv=None, scale: float = 1.0) -> np.ndarray:
        """``base`` moved ``a`` mm along ``fu`` and ``b`` mm along ``fv`` (default: f, d), scaled."""
        fu = self.f if fu is None else fu
        fv = self.d if fv is None else fv
        return base + self.mm * scale * (a * fu + b * fv)


class _Densities(NamedTuple):
    """Random densities of the tissue classes of one image."""

    soft: float
    bone: float
    cortex: float
    tooth: float


class _Vault(NamedTuple):
    """Cranial vault: control points, a point inside the skull, the bone band (outer border
    through nasion, then the inner border)."""

    ctrl: np.ndarray
    brain_centre: np.ndarray
    band: np.ndarray


class _Maxilla(NamedTuple):
    p: np.ndarray  # PNS -> ANS
    q: np.ndarray  # ``p`` rotated by +90 degrees (down)
    ax_u: np.ndarray  # upper incisor axis, incisal tip -> apex


class _Jaw(NamedTuple):
    """Mandible frame: lower incisor, occlusal plane, ramus and mandibular body."""

    ax_l: np.ndarray  # lower incisor axis, incisal tip -> apex
    inf_d: np.ndarray  # infradentale (labial alveolar crest)
    inf_l: np.ndarray  # lingual alveolar crest
    occ_o: np.ndarray  # occlusal plane origin, between the incisor tips
    occ_b: np.ndarray  # along the occlusal plane, backwards
    occ_n: np.ndarray  # occlusal plane normal, down
    r_dir: np.ndarray  # ramus, articulare -> gonion
    r_fwd: np.ndarray  # ramus normal, forward
    lr: float  # ramus length (Ar-Go)
    lb: np.ndarray  # mandibular body, gonion -> menton
    lb_n: np.ndarray  # body normal, down
    lgm: float  # body length (Go-Me)


# Outer border of the cranial vault in the S-N frame, mm from nasion (nasal bones -> occiput).
_VAULT_CTRL_SN = np.array(
    [
        [8.0, 20.0],  # tip of the nasal bones
        [2.5, 8.5],
        [0.0, 0.0],  # nasion (frontonasal concavity)
        [3.5, -9.0],  # glabella
        [2.5, -30.0],
        [-8.0, -55.0],
        [-30.0, -75.0],
        [-60.0, -87.0],
        [-95.0, -85.0],
        [-125.0, -68.0],
        [-148.0, -40.0],
        [-158.0, -8.0],
        [-154.0, 20.0],
        [-142.0, 38.0],
    ]
)
_VAULT_CTRL_SN.setflags(write=False)

# Incisor outline: (mm along the axis for a 23 mm tooth, half-width as a fraction of the width).
_INCISOR_PROFILE = [(0.0, 0.0), (0.7, 1.1), (3.5, 0.45), (9.5, 0.5), (15.0, 0.36)]
_INCISOR_PROFILE += [(23.0, 0.0), (15.0, -0.36), (9.5, -0.5), (3.5, -0.4), (0.7, -0.9)]


def _perp_towards(v: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``_perp(v)``, negated if needed so that it does not point away from ``ref``."""
    n = _perp(v)
    return -n if np.dot(n, ref) < 0 else n


def _make_frame(L: np.ndarray, pixel_spacing_mm: float) -> _Frame:
    """Local frames of the posed landmarks: head forward (Frankfort horizontal) and S-N."""
    mm = 1.0 / pixel_spacing_mm  # px per mm
    f = _unit(L[OR] - L[PO])
    sn = L[N] - L[S]
    u_sn = _unit(sn)
    sc = np.linalg.norm(sn) / (58.8 * mm)  # size relative to the mean S-N length of the model
    return _Frame(L, mm, f, _perp(f), u_sn, _perp(u_sn), sc)


def _draw_densities(rng: np.random.Generator) -> _Densities:
    u_ = rng.uniform
    soft_v = u_(0.30, 0.42)
    bone_v = u_(0.45, 0.70)
    cortex_v = u_(0.25, 0.45)
    tooth_v = u_(0.85, 1.15)
    return _Densities(soft_v, bone_v, cortex_v, tooth_v)


def _vault_thickness(
    rng: np.random.Generator, vault: np.ndarray, nasion: np.ndarray, mm: float
) -> np.ndarray:
    """Per-point thickness: thin nasal bone, thick frontal (sinus) region, ~6 mm elsewhere."""
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(vault, axis=0), axis=1))])
    i_n = int(np.argmin(np.linalg.norm(vault - nasion, axis=1)))
    s_n = arc - arc[i_n]
    base_t = rng.uniform(5.0, 7.5)
    return np.where(
        s_n < 0,
        np.interp(s_n, [-25 * mm, 0.0], [2.0, 7.0]) * mm,
        np.interp(s_n, [0.0, 12 * mm, 40 * mm], [7.0, 11.0, base_t]) * mm,
    )


def _draw_cranial_vault(rng: np.random.Generator, cv: _Canvas, g: _Frame, dens: _Densities) -> _Vault:
    """Cranial vault band (outer border through nasion) with its outer and inner tables."""
    L, mm, at, u_sn, v_sn, sc = g.L, g.mm, g.at, g.u_sn, g.v_sn, g.sc
    bone_v, cortex_v = dens.bone, dens.cortex
    jitter = rng.normal(0.0, 1.5, _VAULT_CTRL_SN.shape)
    jitter[:4] = 0.0
    vault_ctrl = np.array([at(L[N], a, b, u_sn, v_sn, sc) for a, b in _VAULT_CTRL_SN + jitter])
    vault = _catmull_rom(vault_ctrl, step=1.5)
    brain_centre = at(L[S], -20.0, -25.0, u_sn, v_sn, sc)
    thick = _vault_thickness(rng, vault, L[N], mm)
    band = _band(vault, thick, brain_centre)
    cv.fill(band, bone_v * 1.1)
    cv.line(vault, 1.2 * mm, cortex_v)  # outer table
    cv.line(band[len(vault) :], 1.0 * mm, cortex_v * 0.8)  # inner table
    return _Vault(vault_ctrl, brain_centre, band)


def _draw_sella_and_sphenoid(rng: np.random.Generator, cv: _Canvas, g: _Frame, dens: _Densities) -> None:
    """Sella turcica cup (centre = sella), sphenoid body, dorsum sellae and planum sphenoidale."""
    L, mm, at, u_sn, v_sn, sc = g.L, g.mm, g.at, g.u_sn, g.v_sn, g.sc
    bone_v, cortex_v = dens.bone, dens.cortex
    u_ = rng.uniform
    r_s = u_(4.2, 5.8) * mm * sc
    wall = u_(1.3, 2.0) * mm
    ang = np.radians(np.linspace(-15.0, 195.0, 48))
    dirs = np.cos(ang)[:, None] * u_sn + np.sin(ang)[:, None] * v_sn
    cup_in = L[S] + r_s * dirs
    cup_out = L[S] + (r_s + wall) * dirs
    # sphenoid body below the sella, anterior cranial base plate, clivus
    sphen = np.array(
        [
            at(L[S], 9.0, -1.0, u_sn, v_sn, sc),
            at(L[S], 16.0, 2.0, u_sn, v_sn, sc),
            at(L[S], 18.0, 16.0, u_sn, v_sn, sc),
            at(L[S], 6.0, 22.0, u_sn, v_sn, sc),
            at(L[S], -9.0, 12.0, u_sn, v_sn, sc),
            at(L[S], -9.5, -2.0, u_sn, v_sn, sc),
        ]
    )
    cv.fill(_catmull_rom(sphen, closed=True, step=1.5), bone_v * 0.55)
    cv.fill(np.vstack([cup_in, L[S] - 2 * r_s * v_sn]), -bone_v * 0.45)  # the fossa is hollow
    cv.fill(np.vstack([cup_out, cup_in[::-1]]), bone_v * 0.9 + cortex_v)
    # dorsum sellae (posterior) and tuberculum / anterior clinoid
    dorsum = np.array(
        [cup_out[-1], at(L[S], -r_s / mm - 1.0, -5.5, u_sn, v_sn), at(L[S], -2.5, -7.5, u_sn, v_sn)]
    )
    cv.line(_catmull_rom(dorsum, step=1.0), 1.8 * mm, bone_v * 0.9)
    planum = np.array(
        [cup_out[0], at(L[S], 12.0, -3.5, u_sn, v_sn, sc), at(L[N], -14.0, 3.0, u_sn, v_sn, sc)]
    )
    cv.line(_catmull_rom(planum, step=1.5), 1.5 * mm, bone_v * 0.8)


def _draw_clivus(rng: np.random.Generator, cv: _Canvas, g: _Frame, dens: _Densities) -> None:
    """Clivus; its lower (anterior-inferior) border passes through articulare."""
    L, mm, at, u_sn, v_sn, sc = g.L, g.mm, g.at, g.u_sn, g.v_sn, g.sc
    p1 = at(L[S], 6.0, 19.0, u_sn, v_sn, sc)
    along = _unit(L[AR] - p1)
    nrm = _perp_towards(along, L[S] - L[AR])
    bas = L[AR] + along * 9.0 * mm
    clivus_edge = _catmull_rom(np.array([p1, 0.5 * (p1 + L[AR]) + nrm * 1.0 * mm, L[AR], bas]))
    clivus = np.vstack(
        [
            clivus_edge,
            bas + nrm * 10.0 * mm,
            L[AR] + nrm * 13.0 * mm,
            at(L[S], -6.0, 6.0, u_sn, v_sn, sc),
        ]
    )
    clivus_v = dens.bone * rng.uniform(0.65, 0.9)
    cv.fill(clivus, clivus_v)
    cv.line(clivus_edge, 1.0 * mm, dens.cortex * 0.7)


def _draw_orbit(rng: np.random.Generator, cv: _Canvas, g: _Frame, dens: _Densities) -> None:
    """Orbit ring whose lowest point is orbitale."""
    mm, sc, u_ = g.mm, g.sc, rng.uniform
    rx, ry = u_(9.0, 11.0) * mm * sc, u_(11.5, 13.5) * mm * sc
    orbit = _ellipse(g.L[OR] - ry * g.d, rx, ry, g.f)
    cv.line(orbit, 1.3 * mm, dens.bone * 0.75, closed=True)
    cv.fill(orbit, dens.bone * 0.12)


def _draw_ear_rods(rng: np.random.Generator, cv: _Canvas, g: _Frame, dens: _Densities) -> None:
    """Ear rod ring and ear canal; the top of the canal is porion."""
    mm, f, u_ = g.mm, g.f, rng.uniform
    bone_v, cortex_v, soft_v = dens.bone, dens.cortex, dens.soft
    r_c = u_(3.5, 4.5) * mm
    canal_c = g.L[PO] + r_c * g.d
    ring_w = u_(1.5, 2.2) * mm
    cv.fill(_ellipse(canal_c, r_c + ring_w, r_c + ring_w, f), bone_v * 1.3 + cortex_v)
    cv.fill(_ellipse(canal_c, r_c, r_c, f), -(bone_v * 1.3 + cortex_v))
    cv.fill(_ellipse(canal_c, r_c, r_c, f), -soft_v * 0.5, layer="soft")


def _incisor_axis(g: _Frame, ref: int, tip: int) -> tuple[np.ndarray, np.ndarray]:
    """Axis (incisal tip -> apex) of the incisor at landmark ``tip`` and its labial normal."""
    ax = _unit(g.at(g.L[ref], -4.0, 3.0) - g.L[tip])
    return ax, _perp_towards(ax, g.f)


def _draw_maxilla(rng: np.random.Generator, cv: _Canvas, g: _Frame, dens: _Densities) -> _Maxilla:
    """Maxilla and palate (PNS -> ANS) through A point, down to the prosthion."""
    L, mm = g.L, g.mm
    p = _unit(L[ANS] - L[PNS])
    q = _perp(p)  # down
    lp = np.linalg.norm(L[ANS] - L[PNS])
    ax_u, n_u = _incisor_axis(g, A, U1)
    pr = L[U1] + 10.0 * mm * ax_u + 3.2 * mm * n_u  # prosthion
    pr_l = L[U1] + 11.0 * mm * ax_u - 4.0 * mm * n_u
    nasal_floor = [
        L[PNS],
        L[PNS] + 0.3 * lp * p - 1.6 * mm * q,
        L[PNS] + 0.75 * lp * p - 1.8 * mm * q,
        L[ANS] - 5.0 * mm * p - 0.6 * mm * q,
    ]
    ant = _catmull_rom(np.array([L[ANS], 0.55 * (L[ANS] + L[A]) - 0.3 * mm * p, L[A], pr]))
    oral = [
        pr_l,
        L[PNS] + 0.75 * lp * p + 6.0 * mm * q,
        L[PNS] + 0.35 * lp * p + 4.5 * mm * q,
        L[PNS] + 0.08 * lp * p + 1.5 * mm * q,
    ]
    upper = _catmull_rom(np.array([*nasal_floor, L[ANS]]), step=1.0)
    lower = _catmull_rom(np.array([pr, *oral, L[PNS]]), step=1.0)
    maxilla = np.vstack([upper, ant[1:], lower[1:]])
    maxilla_v = dens.bone * rng.uniform(0.75, 0.95)
    cv.fill(maxilla, maxilla_v)
    cv.line(np.vstack([upper, ant[1:]]), 1.0 * mm, dens.cortex)
    _draw_pterygomaxillary_fissure(cv, L[PNS], p, q, mm, dens.bone)
    return _Maxilla(p, q, ax_u)


def _draw_pterygomaxillary_fissure(
    cv: _Canvas, pns: np.ndarray, p: np.ndarray, q: np.ndarray, mm: float, bone_v: float
) -> None:
    """Inverted tear drop ending just above PNS."""
    ptm = np.array(
        [
            pns - 1.5 * mm * q,
            pns - 9.0 * mm * q - 3.5 * mm * p,
            pns - 19.0 * mm * q - 1.0 * mm * p,
            pns - 17.0 * mm * q + 4.0 * mm * p,
            pns - 8.0 * mm * q + 2.5 * mm * p,
            pns - 1.5 * mm * q,
        ]
    )
    cv.line(_catmull_rom(ptm, step=1.0), 1.0 * mm, bone_v * 0.5)


def _incisor_outline(tip: np.ndarray, axis: np.ndarray, length: float, width: float, mm: float) -> np.ndarray:
    """Incisor outline: tip at ``tip``, axis towards the apex, sizes in mm."""
    nn = _perp(axis)
    k = length / 23.0
    pts = np.array([tip + mm * (a * k * axis + b * width * nn) for a, b in _INCISOR_PROFILE])
    return _catmull_rom(pts, closed=True, step=0.7)


def _jaw_geometry(g: _Frame) -> _Jaw:
    """Lower incisor axis, alveolar crests, occlusal plane, ramus and mandibular body frames."""
    L, mm, f, d = g.L, g.mm, g.f, g.d
    ax_l, n_l = _incisor_axis(g, B, L1)
    inf_d = L[L1] + 9.0 * mm * ax_l + 2.8 * mm * n_l  # infradentale
    inf_l = L[L1] + 10.0 * mm * ax_l - 3.5 * mm * n_l
    occ_o = 0.5 * (L[U1] + L[L1])
    occ_b = _unit(-f * np.cos(np.radians(8.0)) - d * np.sin(np.radians(8.0)))  # backwards
    occ_n = _perp_towards(occ_b, d)  # down
    r_dir = _unit(L[GO] - L[AR])
    r_fwd = _perp_towards(r_dir, f)
    lr = np.linalg.norm(L[GO] - L[AR])
    lb = _unit(L[ME] - L[GO])
    lb_n = _perp_towards(lb, d)
    lgm = np.linalg.norm(L[ME] - L[GO])
    return _Jaw(ax_l, inf_d, inf_l, occ_o, occ_b, occ_n, r_dir, r_fwd, lr, lb, lb_n, lgm)


def _mandible_outline(g: _Frame, j: _Jaw) -> np.ndarray:
    """Closed outline of the mandible through Ar, Go, Me, Gn, Pog, B (condyle to condyle)."""
    L, mm, f = g.L, g.mm, g.f
    occ_o, occ_b, occ_n, r_dir, r_fwd = j.occ_o, j.occ_b, j.occ_n, j.r_dir, j.r_fwd
    lr, lb, lb_n, lgm = j.lr, j.lb, j.lb_n, j.lgm
    retromolar = occ_o + occ_b * 42.0 * mm + occ_n * 6.0 * mm
    coronoid = L[AR] - 1.0 * mm * r_dir + 30.0 * mm * r_fwd
    mand_ctrl = [
        L[AR],
        L[AR] + 0.5 * lr * r_dir + 1.2 * mm * r_fwd,
        L[GO] - 7.0 * mm * r_dir + 0.3 * mm * r_fwd,
        L[GO],
        L[GO] + 7.0 * mm * lb - 0.3 * mm * lb_n,
        L[GO] + 0.35 * lgm * lb - 1.5 * mm * lb_n,
        L[GO] + 0.75 * lgm * lb + 0.3 * mm * lb_n,
        L[ME],
        L[GN],
        L[POG],
        0.5 * (L[POG] + L[B]) + 0.4 * mm * f,
        L[B],
        j.inf_d,
        j.inf_l,
        occ_o + occ_b * 14.0 * mm + occ_n * 7.0 * mm,
        occ_o + occ_b * 28.0 * mm + occ_n * 6.5 * mm,
        retromolar,
        L[AR] + 0.55 * lr * r_dir + 24.0 * mm * r_fwd,
        L[AR] + 0.2 * lr * r_dir + 27.0 * mm * r_fwd,
        coronoid,
        L[AR] + 8.0 * mm * r_dir + 21.0 * mm * r_fwd,  # sigmoid notch
        L[AR] + 3.0 * mm * r_dir + 12.0 * mm * r_fwd,
        L[AR] - 5.0 * mm * r_dir + 9.0 * mm * r_fwd,  # front of the condyle
        L[AR] - 9.5 * mm * r_dir + 4.5 * mm * r_fwd,  # top of the condyle
        L[AR] - 6.0 * mm * r_dir - 0.5 * mm * r_fwd,
    ]
    return _catmull_rom(np.array(mand_ctrl), closed=True, step=1.0)


def _draw_mandible(rng: np.random.Generator, cv: _Canvas, g: _Frame, dens: _Densities, j: _Jaw) -> None:
    """Mandible with the cortex of its lower border and symphysis, and the mandibular canal."""
    L, mm, f, d = g.L, g.mm, g.f, g.d
    bone_v, cortex_v = dens.bone, dens.cortex
    mandible = _mandible_outline(g, j)
    mand_v = bone_v * rng.uniform(0.85, 1.05)
    cv.fill(mandible, mand_v)
    # cortical outline of the lower border and symphysis, and the inner symphysis cortex
    i_id = int(np.argmin(np.linalg.norm(mandible - j.inf_d, axis=1)))  # from articulare (index 0)
    cv.line(mandible[: i_id + 1], 1.6 * mm, cortex_v * 1.2)
    symph_in = np.array(
        [
            j.inf_l,
            L[B] - 7.0 * mm * f + 2.0 * mm * d,
            L[POG] - 9.0 * mm * f + 1.0 * mm * d,
            L[ME] - 8.0 * mm * f - 0.8 * mm * d,
        ]
    )
    cv.line(_catmull_rom(symph_in, step=1.0), 1.2 * mm, cortex_v * 0.8)
    # mandibular canal (faint)
    lr, lb, lb_n, lgm, r_dir, r_fwd = j.lr, j.lb, j.lb_n, j.lgm, j.r_dir, j.r_fwd
    canal = np.array([L[AR] + 0.45 * lr * r_dir + 12 * mm * r_fwd, L[GO] - 8 * mm * lb_n + 14 * mm * lb])
    canal = np.vstack([canal, L[GO] + 0.7 * lgm * lb - 6.0 * mm * lb_n])
    cv.line(_catmull_rom(canal, step=1.5), 2.0 * mm, -bone_v * 0.2)


def _draw_posterior_teeth(
    rng: np.random.Generator, cv: _Canvas, g: _Frame, dens: _Densities, j: _Jaw
) -> None:
    """Premolars and molars along the occlusal plane (distractors, skipped near a landmark)."""
    mm, occ_b, occ_n, tooth_v = g.mm, j.occ_b, j.occ_n, dens.tooth
    for k, dist in enumerate((15.0, 22.0, 30.0, 39.0)):
        c0 = j.occ_o + occ_b * dist * mm
        wdt = (6.5 if k < 2 else 9.5) * mm * rng.uniform(0.9, 1.1)
        for sgn in (-1.0, 1.0):  # upper (-1) and lower (+1)
            crown_c = c0 + sgn * occ_n * 3.6 * mm
            crown = _ellipse(crown_c, wdt / 2, 3.4 * mm, occ_b, n=32)
            root = np.array(
                [
                    crown_c - occ_b * wdt * 0.35,
                    crown_c + sgn * occ_n * 14.0 * mm - occ_b * wdt * 0.1,
                    crown_c + sgn * occ_n * 14.0 * mm + occ_b * wdt * 0.1,
                    crown_c + occ_b * wdt * 0.35,
                ]
            )
            if _min_distance(np.vstack([crown, root]), g.L) > 2.5 * mm:
                cv.fill(crown, tooth_v * 0.55)
                cv.fill(root, tooth_v * 0.3)


def _draw_incisors(
    rng: np.random.Generator, cv: _Canvas, g: _Frame, dens: _Densities, ax_u: np.ndarray, ax_l: np.ndarray
) -> None:
    """Upper and lower central incisors (tips = landmarks 11 and 12) with their pulp canals."""
    L, mm, u_, tooth_v = g.L, g.mm, rng.uniform, dens.tooth
    upper_inc = _incisor_outline(L[U1], ax_u, 23.5 * u_(0.95, 1.05), 7.0, mm)
    lower_inc = _incisor_outline(L[L1], ax_l, 21.0 * u_(0.95, 1.05), 6.0, mm)
    cv.fill(lower_inc, tooth_v)
    cv.fill(upper_inc, tooth_v)
    for tip, ax, ln in ((L[U1], ax_u, 21.0), (L[L1], ax_l, 19.0)):  # pulp canals
        cv.line(np.array([tip + 6 * mm * ax, tip + ln * mm * ax]), 1.0 * mm, -tooth_v * 0.35)


def _behind(g: _Frame, i: int, j: int, depth_mm: float) -> np.ndarray:
    """Midpoint of landmarks i and j, moved to ``depth_mm`` behind the rearmost of them."""
    L, f = g.L, g.f
    mid = 0.5 * (L[i] + L[j])
    rear = min(np.dot(L[i], f), np.dot(L[j], f))
    return mid + (rear - np.dot(mid, f) - depth_mm * g.mm) * f


def _soft_tissue_profile(rng: np.random.Generator, g: _Frame, vault: _Vault) -> np.ndarray:
    """Control points of the head silhouette: scalp, forehead, nose, lips, chin, neck."""
    L, mm, f, at, u_sn, v_sn, u_ = g.L, g.mm, g.f, g.at, g.u_sn, g.v_sn, rng.uniform
    scalp = u_(5.0, 7.0) * mm
    back = [c + scalp * _unit(c - vault.brain_centre) for c in vault.ctrl[4:][::-1]]  # occiput -> forehead
    soft_n = L[N] + u_(6.0, 8.0) * mm * u_sn - 1.0 * mm * v_sn
    prn = at(L[SN], u_(16.0, 21.0), -u_(6.0, 10.0))
    stom = _behind(g, UL, LL, u_(2.0, 4.0))
    lmf = _behind(g, LL, SPOG, u_(3.5, 6.0))
    soft_me = at(L[ME], 2.0, u_(6.0, 8.0))
    profile = [
        at(L[AR], -75.0, 140.0),  # behind the neck, far below
        at(L[AR], -68.0, 55.0),  # nape
        *back,
        at(L[N], 6.0, -14.0, u_sn, v_sn) + 0.5 * scalp * u_sn,
        soft_n,
        at(soft_n, 5.0, 13.0, u_sn, v_sn),
        at(prn, -4.0, -5.0),
        prn,
        at(prn, -1.5, 3.0),
        at(L[SN], 4.0, -1.5),
        L[SN],
        0.5 * (L[SN] + L[UL]) - 0.8 * mm * f,
        at(L[UL], -0.7, -3.5),  # flanking points make each landmark the most anterior
        L[UL],
        at(L[UL], -1.0, 3.0),
        stom,
        at(L[LL], -1.0, -3.0),
        L[LL],
        at(L[LL], -0.8, 3.5),
        lmf,
        at(L[SPOG], -0.5, -4.0),
        L[SPOG],
        at(L[SPOG], -0.8, 3.5),
        soft_me,
        at(L[ME], -22.0, 13.0),
        at(L[ME], -32.0, 22.0),
        at(L[ME], -36.0, 110.0),  # front of the neck, far below
    ]
    return np.array(profile)


def _draw_soft_tissue(
    rng: np.random.Generator, cv: _Canvas, g: _Frame, dens: _Densities, vault: _Vault
) -> None:
    """Head silhouette through the soft-tissue landmarks 13-16, plus a denser scalp band."""
    head = _catmull_rom(_soft_tissue_profile(rng, g, vault), closed=True, step=1.0)
    cv.fill(head, dens.soft, layer="soft")
    # lips/nose slightly denser at the profile, brain slightly lighter
    cv.fill(vault.band, dens.soft * 0.15, layer="soft")


def _cervical_vertebrae(rng: np.random.Generator, g: _Frame, bone_v: float) -> list[tuple[np.ndarray, float]]:
    """Cervical vertebrae C2..C5: rounded bodies and posterior arches, as (polygon, density)."""
    mm, f, d, u_ = g.mm, g.f, g.d, rng.uniform
    parts: list[tuple[np.ndarray, float]] = []
    col_top = g.at(g.L[AR], -u_(14.0, 17.0), u_(13.0, 17.0))
    col_dir = _unit(d * 0.97 - f * 0.25)
    col_fwd = _perp_towards(col_dir, f)
    for k in range(4):
        c0 = col_top + k * u_(16.0, 18.0) * mm * col_dir
        hw, hh = 7.5 * mm, (6.0 if k else 9.0) * mm
        corners = [(-hw, -hh), (hw, -hh * 0.9), (hw, hh), (-hw, hh)]
        body = np.array([c0 + a * col_fwd + b * col_dir for a, b in corners])
        parts.append((_catmull_rom(body, closed=True, step=2.0), bone_v * u_(0.35, 0.55)))
        arch = np.array([c0 - 9 * mm * col_fwd - 2 * mm * col_dir, c0 - 24 * mm * col_fwd])
        parts.append((_band(arch, np.full(2, 5 * mm), c0 + 10 * mm * col_dir), bone_v * 0.3))
    return parts


def _airway(
    rng: np.random.Generator, g: _Frame, soft_v: float, mx: _Maxilla, j: _Jaw
) -> tuple[np.ndarray, float]:
    """Pharyngeal airway behind the palate and the ramus, as (polygon, negative density)."""
    L, mm, f, d, p, q, r_fwd = g.L, g.mm, g.f, g.d, mx.p, mx.q, j.r_fwd
    u_ = rng.uniform
    airway_c = np.array(
        [
            L[PNS] - 10.0 * mm * p - 7.0 * mm * q,
            L[PNS] - 13.0 * mm * p + 8.0 * mm * q,
            0.5 * (L[GO] + L[AR]) + 4.0 * mm * r_fwd + 15.0 * mm * d,
            L[GO] + 6.0 * mm * r_fwd + 22.0 * mm * d,
        ]
    )
    airway = _catmull_rom(airway_c, step=2.0)
    airway = _band(airway, np.full(len(airway), u_(7.0, 11.0) * mm), airway[0] - 50 * mm * f)
    return airway, -soft_v * u_(0.25, 0.45)


def _draw_distractors(
    rng: np.random.Generator, cv: _Canvas, g: _Frame, dens: _Densities, mx: _Maxilla, j: _Jaw
) -> None:
    """Faint vertebrae, hyoid and airway, each drawn only if it stays clear of every landmark."""
    L, mm, f, d, bone_v = g.L, g.mm, g.f, g.d, dens.bone
    distract = _cervical_vertebrae(rng, g, bone_v)
    hy = L[GO] + 0.62 * (L[ME] - L[GO]) + rng.uniform(14.0, 20.0) * mm * d
    distract.append((_ellipse(hy, 6.0 * mm, 2.2 * mm, _unit(f - 0.3 * d), n=24), bone_v * 0.5))
    distract.append(_airway(rng, g, dens.soft, mx, j))
    for poly, val in distract:
        if _min_distance(poly, L) > 3.0 * mm:
            cv.fill(poly, val, layer="soft" if val < 0 else "bone")


def _draw_ruler(
    rng: np.random.Generator, cv: _Canvas, g: _Frame, dens: _Densities, width: int, height: int
) -> None:
    """Ruler (cephalostat nasion relator scale) in front of the face, top right."""
    mm, u_, bone_v = g.mm, rng.uniform, dens.bone
    rx0 = width - u_(10.0, 16.0) * mm
    ry0, ry1 = u_(0.04, 0.10) * height, u_(0.30, 0.40) * height
    if abs(rx0 - g.L[:, 0].max()) > 6 * mm:
        for yy in np.arange(ry0, ry1, 1.0 * mm * 5):
            tick = np.array([[rx0, yy], [rx0 + 3 * mm, yy]])
            cv.line(tick, 0.6 * mm, bone_v * 0.8)
        cv.line(np.array([[rx0, ry0], [rx0, ry1]]), 0.8 * mm, bone_v * 0.8)


def _film_response(rng: np.random.Generator, cv: _Canvas, width: int, height: int) -> np.ndarray:
    """Downsample the canvas and apply texture, film response, gradient, blur and noise."""
    u_ = rng.uniform
    soft, bone = cv.downsample(width, height)
    shape = (height, width)
    tex = 1.0 + 0.12 * _smooth_field(rng, shape, max(width, height) // 6)
    bone = np.maximum(bone, 0.0) * tex
    soft = np.maximum(soft, 0.0) * (1.0 + 0.05 * _smooth_field(rng, shape, 10))
    density = soft + bone
    img = 1.0 - np.exp(-u_(1.3, 1.9) * density)
    img = img ** u_(0.8, 1.25)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ga = np.radians(u_(0.0, 360.0))
    grad = (np.cos(ga) * xx / width + np.sin(ga) * yy / height) * u_(0.0, 0.10)
    low = u_(0.03, 0.10)
    img = low + u_(0.75, 0.92) * img + grad + 0.03 * _smooth_field(rng, shape, 4)
    sigma = u_(0.5, 1.2)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigma)
    speckle = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 1.0)
    img = img * (1.0 + u_(0.02, 0.06) * speckle)
    img = img + rng.normal(0.0, u_(0.008, 0.025), shape).astype(np.float32)
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def render_cephalogram(
    rng: np.random.Generator,
    landmarks_px: np.ndarray,
    width: int,
    height: int,
    pixel_spacing_mm: float,
) -> np.ndarray:
    """Render an X-ray-like lateral cephalogram around the given landmarks.

    Every landmark lies on a drawn structure: nasion at the anterior border of the cranial vault
    (frontonasal concavity), sella at the centre of the sella turcica cup, orbitale at the lowest
    point of the orbit ring, porion at the top of the ear canal inside the ear-rod ring, PNS/ANS
    at the two tips of the palate, A point on the anterior maxillary concavity, the incisor tips
    at the incisal edges, the mandibular landmarks and articulare on the outline of the mandible
    (articulare where the ramus meets the clivus), the soft-tissue landmarks on the skin/air
    profile. Random intensities, gamma, background gradient, blur, noise, texture and a few
    distractors (cervical vertebrae, hyoid, posterior teeth, airway, ruler) come from ``rng``.

    Args:
        rng: source of all randomness of the appearance.
        landmarks_px: (19, 2) landmark positions in pixels (pixel-centre convention).
        width, height: image size in pixels.
        pixel_spacing_mm: mm per pixel (structure sizes are specified in mm).

    Returns:
        uint8 image of shape (height, width).
    """
    L = np.asarray(landmarks_px, dtype=np.float64)
    if L.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"landmarks_px must be (19, 2), got {L.shape}")
    g = _make_frame(L, pixel_spacing_mm)
    cv = _Canvas(width, height)
    # The order of the steps below is part of the output: each one draws from ``rng`` and
    # accumulates float32 densities on the canvas, so reordering changes the image.
    dens = _draw_densities(rng)
    vault = _draw_cranial_vault(rng, cv, g, dens)
    _draw_sella_and_sphenoid(rng, cv, g, dens)
    _draw_clivus(rng, cv, g, dens)
    _draw_orbit(rng, cv, g, dens)
    _draw_ear_rods(rng, cv, g, dens)
    maxilla = _draw_maxilla(rng, cv, g, dens)
    jaw = _jaw_geometry(g)
    _draw_mandible(rng, cv, g, dens, jaw)
    _draw_posterior_teeth(rng, cv, g, dens, jaw)
    _draw_incisors(rng, cv, g, dens, maxilla.ax_u, jaw.ax_l)
    _draw_soft_tissue(rng, cv, g, dens, vault)
    _draw_distractors(rng, cv, g, dens, maxilla, jaw)
    _draw_ruler(rng, cv, g, dens, width, height)
    return _film_response(rng, cv, width, height)


# --------------------------------------------------------------------------------------------
# samples and datasets
# --------------------------------------------------------------------------------------------


def generate_sample(
    seed: int,
    width: int,
    height: int,
    pixel_spacing_mm: float,
    pose_rotation_deg: float,
    pose_scale: float,
    pose_shift_mm: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic cephalogram, a pure function of its arguments.

    The seed is split into independent streams for shape, pose and appearance, so the
    landmarks do not depend on the rendering code. Pose: rotation uniform in
    ``+-pose_rotation_deg`` degrees, isotropic scale uniform in ``1 +- pose_scale``, shift
    uniform in ``+-pose_shift_mm`` per axis; all landmarks stay >= 10 % of the image size
    away from the borders.

    Returns:
        ``(image, landmarks)``: uint8 (height, width) image and (19, 2) float landmark
        positions in pixels (x, y; pixel-centre convention).
    """
    shape_ss, pose_ss, render_ss = np.random.SeedSequence(int(seed)).spawn(3)
    shape_mm = sample_landmarks(np.random.default_rng(shape_ss), _shape_model())
    landmarks = _pose_landmarks(
        np.random.default_rng(pose_ss),
        shape_mm,
        width,
        height,
        pixel_spacing_mm,
        pose_rotation_deg,
        pose_scale,
        pose_shift_mm,
    )
    image = render_cephalogram(np.random.default_rng(render_ss), landmarks, width, height, pixel_spacing_mm)
    return image, landmarks


@functools.cache
def _shape_model() -> dict:
    return load_shape_model()


def _sample_seed(seed: int, index: int) -> int:
    """Per-sample seed derived from (dataset seed, 1-based image id)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _write_annotation(path: Path, points: np.ndarray) -> None:
    path.write_text("".join(f"{x:.2f},{y:.2f}\n" for x, y in points))


def generate_dataset(
    out_root: Path,
    *,
    n_train: int,
    n_test: int,
    seed: int,
    width: int,
    height: int,
    pixel_spacing_mm: float,
    annotator_sd_mm: float,
    pose_rotation_deg: float,
    pose_scale: float,
    pose_shift_mm: float,
) -> None:
    """Write a synthetic dataset in the official ISBI 2015 layout under ``out_root``.

    Layout: ``RawImage/TrainingData/001.png .. {n_train:03d}.png``, ``RawImage/Test1Data/``
    with ids continuing from ``n_train + 1``, ``AnnotationsByMD/400_senior|400_junior/NNN.txt``
    (19 lines ``x,y`` in pixels, 2 decimals: true position plus independent Gaussian annotator
    noise of ``annotator_sd_mm`` per doctor) and ``dataset.yaml`` (size, spacing, generator
    arguments, provenance). Image ``NNN`` depends only on ``(seed, NNN)`` and the geometry
    arguments. The dataset is built in a temporary sibling directory and renamed into place,
    replacing an existing ``out_root``.
    """
    out_root = Path(out_root)
    out_root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_root.name}.tmp-", dir=out_root.parent))
    args = {
        "n_train": int(n_train),
        "n_test": int(n_test),
        "seed": int(seed),
        "width": int(width),
        "height": int(height),
        "pixel_spacing_mm": float(pixel_spacing_mm),
        "annotator_sd_mm": float(annotator_sd_mm),
        "pose_rotation_deg": float(pose_rotation_deg),
        "pose_scale": float(pose_scale),
        "pose_shift_mm": float(pose_shift_mm),
    }
    try:
        _write_samples(tmp, args)
        os.chmod(tmp, 0o755)
        (tmp / "dataset.yaml").write_text(yaml.safe_dump(_dataset_meta(args), sort_keys=False))
        _replace_dir(tmp, out_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_samples(root: Path, args: dict) -> None:
    """Images and both doctors' annotations of every sample, in the ISBI layout under ``root``."""
    img_dirs = {"train": root / "RawImage" / "TrainingData", "test": root / "RawImage" / "Test1Data"}
    ann_dirs = [root / "AnnotationsByMD" / "400_senior", root / "AnnotationsByMD" / "400_junior"]
    for p in (*img_dirs.values(), *ann_dirs):
        p.mkdir(parents=True)
    seed, spacing = args["seed"], args["pixel_spacing_mm"]
    sd_px = args["annotator_sd_mm"] / spacing
    n_train = args["n_train"]
    for idx in range(1, n_train + args["n_test"] + 1):
        split = "train" if idx <= n_train else "test"
        image, landmarks = generate_sample(
            _sample_seed(seed, idx),
            args["width"],
            args["height"],
            spacing,
            args["pose_rotation_deg"],
            args["pose_scale"],
            args["pose_shift_mm"],
        )
        name = f"{idx:03d}"
        if not cv2.imwrite(str(img_dirs[split] / f"{name}.png"), image):
            raise OSError(f"could not write {name}.png")
        noise_rng = np.random.default_rng(np.random.SeedSequence([int(seed), idx, 1]))
        for ann_dir in ann_dirs:
            noisy = landmarks + noise_rng.normal(0.0, sd_px, landmarks.shape)
            _write_annotation(ann_dir / f"{name}.txt", noisy)


def _dataset_meta(args: dict) -> dict:
    """``dataset.yaml``: size, spacing, landmark names, id ranges, generator arguments, provenance."""
    n_train, n_test = args["n_train"], args["n_test"]
    return {
        "synthetic": True,
        "note": (
            "Synthetic lateral cephalograms from mahtnet.data.synthetic (shape model fitted "
            "on ISBI 2015 TrainingData 001-150; not real patients). Annotations = true "
            "landmark + independent Gaussian noise per doctor."
        ),
        "layout": "ISBI 2015 (RawImage/{TrainingData,Test1Data}, AnnotationsByMD)",
        "image_format": "png",
        "pixel_spacing_mm": args["pixel_spacing_mm"],
        "width": args["width"],
        "height": args["height"],
        "num_landmarks": NUM_LANDMARKS,
        "landmark_names": list(LANDMARK_NAMES),
        "train_ids": [1, n_train] if n_train else [],
        "test_ids": [n_train + 1, n_train + n_test] if n_test else [],
        "generator": {"module": "mahtnet.data.synthetic.generate_dataset", **args},
        "shape_model_provenance": _shape_model().get("provenance", {}),
    }


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``, replacing an existing ``target`` (moved aside first)."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
