"""Shape-consistent decoding: repair gross misses with a statistical shape model.

A heatmap network sometimes puts a landmark's arg-max on the wrong structure while a
second, lower peak sits at the right place. :func:`top_k_peaks` keeps the ``k`` best
peaks of every heatmap; :func:`choose_peaks` chooses, per landmark, the peak most
consistent with a :class:`ShapePrior` fitted on the other landmarks. The arg-max is kept
whenever it is plausible under the prior, so precise predictions are not disturbed.

The prior is a point-distribution model (generalised Procrustes alignment with
translation, rotation and scale removed, then PCA) in millimetres, so it does not depend
on the image resolution. Fits use the probabilistic-PCA MAP estimate: a Gaussian prior on
the mode coefficients and isotropic point noise of the variance the retained modes leave
unexplained; coefficients are in addition clamped to +/-3 SD.

Shapes in docstrings: ``N`` shapes/images, ``K`` landmarks, ``M`` modes, ``k`` peaks per
landmark, ``B`` fits done in one batch. Coordinates are ``(x, y)``, pixel centres at
integers; "mm" means pixel coordinates times the pixel spacing (any origin).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from mahtnet.codec import HeatmapCodec
from mahtnet.io import load_npz, save_npz

if TYPE_CHECKING:
    from mahtnet.data.preprocess import PreparedSet

CLAMP_SD = 3.0  # mode coefficients are clamped to +/- this many SD
RAYLEIGH_MEDIAN = math.sqrt(2.0 * math.log(2.0))  # median radial error / per-axis SD (2-D Gaussian)
_KEYS = ("mean", "modes", "variances", "noise_var", "residual_sd")
_EPS = 1e-12


def _complex(points: np.ndarray) -> np.ndarray:
    """``(..., 2)`` real -> ``(...)`` complex ``x + iy``."""
    points = np.asarray(points, dtype=np.float64)
    return points[..., 0] + 1j * points[..., 1]


def _real(z: np.ndarray) -> np.ndarray:
    """``(...)`` complex -> ``(..., 2)`` real."""
    return np.stack([z.real, z.imag], axis=-1)


def _similarity(model: np.ndarray, target: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares similarity ``target ~ c * model + t`` for complex ``(B, K)``
    shapes and weights ``(B, K)``; returns ``c`` (scale and rotation) and ``t``, both ``(B,)``."""
    total = w.sum(axis=1) + _EPS
    mc = (w * model).sum(axis=1) / total
    tc = (w * target).sum(axis=1) / total
    dm = model - mc[:, None]
    num = (w * np.conj(dm) * (target - tc[:, None])).sum(axis=1)
    den = (w * np.abs(dm) ** 2).sum(axis=1) + _EPS
    c = num / den
    return c, tc - c * mc


def generalized_procrustes(shapes: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Similarity-align shapes ``(N, K, 2)`` to their common mean; returns the aligned shapes
    ``(N, K, 2)``, centred, in the orientation of ``shapes[0]`` and with the mean's centroid
    size equal to the average centroid size of the input (so the result stays in mm)."""
    z = _complex(shapes)
    z = z - z.mean(axis=1, keepdims=True)
    size = np.sqrt((np.abs(z) ** 2).sum(axis=1)).mean()
    ref = z[0] / np.sqrt((np.abs(z[0]) ** 2).sum()) * size
    mean = ref
    ones = np.ones(z.shape)
    for _ in range(iterations):
        c, _ = _similarity(z, np.broadcast_to(mean, z.shape), ones)
        aligned = c[:, None] * z
        new = aligned.mean(axis=0)
        rot = np.vdot(new, ref)  # rotate the new mean onto the reference, rescale to `size`
        new = new * rot / (abs(rot) + _EPS)
        new = new / (np.sqrt((np.abs(new) ** 2).sum()) + _EPS) * size
        done = np.abs(new - mean).max() < 1e-10
        mean = new
        if done:
            break
    c, _ = _similarity(z, np.broadcast_to(mean, z.shape), ones)
    return _real(c[:, None] * z)


@dataclass
class ShapePrior:
    """Point-distribution model of ``K`` landmarks in mm.

    Attributes:
        mean: mean shape ``(K, 2)`` mm, centred.
        modes: orthonormal modes ``(M, K, 2)``; shape = ``mean + sum_m b_m modes[m]``.
        variances: variance of each mode coefficient ``(M,)`` mm^2.
        noise_var: per-coordinate variance the modes leave unexplained (mm^2).
        residual_sd: per landmark, the robust per-axis SD (mm) of its prediction from the
            other landmarks on held-out training shapes, ``(K,)``; floored.
    """

    mean: np.ndarray
    modes: np.ndarray
    variances: np.ndarray
    noise_var: float
    residual_sd: np.ndarray

    @property
    def num_landmarks(self) -> int:
        return len(self.mean)

    @classmethod
    def fit(
        cls,
        shapes_mm: np.ndarray,
        n_modes: int | None = None,
        variance_kept: float = 0.98,
        sd_floor_mm: float = 1.0,
        cv_folds: int = 5,
    ) -> ShapePrior:
        """Fit on training shapes ``(N, K, 2)`` mm. ``n_modes`` (default: the fewest modes
        explaining ``variance_kept`` of the aligned variance). ``residual_sd`` comes from
        ``cv_folds``-fold cross-validation (in-sample when ``N < 2 * cv_folds``)."""
        shapes = np.asarray(shapes_mm, dtype=np.float64)
        if shapes.ndim != 3 or shapes.shape[2] != 2 or len(shapes) < 3:
            raise ValueError(f"need training shapes (N >= 3, K, 2), got {shapes.shape}")
        if not np.all(np.isfinite(shapes)):
            raise ValueError("training shapes contain NaN or inf")
        prior = cls._fit_pdm(shapes, n_modes, variance_kept)
        errors = prior._cv_errors(shapes, n_modes, variance_kept, cv_folds)  # (N, K) mm
        prior.residual_sd = np.maximum(np.median(errors, axis=0) / RAYLEIGH_MEDIAN, sd_floor_mm)
        return prior

    @classmethod
    def _fit_pdm(cls, shapes: np.ndarray, n_modes: int | None, variance_kept: float) -> ShapePrior:
        """Procrustes + PCA of shapes ``(N, K, 2)``; ``residual_sd`` left at 1."""
        n, k, _ = shapes.shape
        flat = generalized_procrustes(shapes).reshape(n, 2 * k)
        mean = flat.mean(axis=0)
        _, s, vt = np.linalg.svd(flat - mean, full_matrices=False)
        var = s**2 / (n - 1)
        dof = max(2 * k - 4, 1)  # the 4 similarity directions carry no variance
        limit = max(min(len(var), dof - 1, n - 1), 1)
        if n_modes is None:
            frac = np.cumsum(var) / max(var.sum(), _EPS)
            n_modes = int(np.searchsorted(frac, variance_kept - 1e-12) + 1)
        m = int(np.clip(n_modes, 1, limit))
        noise = float(var[m:].sum() / (dof - m)) if dof > m else 0.0
        return cls(
            mean=mean.reshape(k, 2),
            modes=vt[:m].reshape(m, k, 2),
            variances=np.maximum(var[:m], _EPS),
            noise_var=max(noise, 1e-4),
            residual_sd=np.ones(k),
        )

    def _cv_errors(
        self, shapes: np.ndarray, n_modes: int | None, variance_kept: float, folds: int
    ) -> np.ndarray:
        """Radial errors ``(N, K)`` of leave-one-landmark-out predictions, each shape
        predicted by a model fitted without its fold."""
        n = len(shapes)
        if folds < 2 or n < 2 * folds:
            return np.stack([self._loo_errors(s) for s in shapes])
        errors = np.empty(shapes.shape[:2])
        fold = np.arange(n) % folds
        for f in range(folds):
            model = ShapePrior._fit_pdm(shapes[fold != f], n_modes, variance_kept)
            errors[fold == f] = [model._loo_errors(s) for s in shapes[fold == f]]
        return errors

    def _loo_errors(self, shape: np.ndarray) -> np.ndarray:
        """Radial errors ``(K,)`` of :meth:`loo_predict` on one complete shape ``(K, 2)``."""
        pred = self.loo_predict(shape, np.ones(len(shape)))
        return np.linalg.norm(pred - shape, axis=-1)

    def fit_batch(self, points_mm: np.ndarray, weights: np.ndarray, iterations: int = 30) -> np.ndarray:
        """Weighted MAP fits of pose and mode coefficients to points ``(B, K, 2)`` mm with
        weights ``(B, K)`` in ``[0, 1]``; returns the fitted model shapes ``(B, K, 2)`` in
        the points' frame. Each fit needs at least two landmarks of positive weight."""
        z = _complex(points_mm)
        w = np.asarray(weights, dtype=np.float64)
        modes = self.modes.reshape(len(self.modes), -1)  # (M, 2K)
        b = np.zeros((len(z), len(modes)))
        limit = CLAMP_SD * np.sqrt(self.variances)
        for _ in range(iterations):
            shape = self.mean.ravel() + b @ modes  # (B, 2K) model frame
            c, t = _similarity(_complex(shape.reshape(len(z), -1, 2)), z, w)
            local = _real((z - t[:, None]) / (c[:, None] + _EPS)).reshape(len(z), -1)
            new = self._solve_modes(local, w, np.abs(c) ** 2, modes)
            new = np.clip(new, -limit, limit)
            if np.abs(new - b).max(initial=0.0) < 1e-7:
                b = new
                break
            b = new
        shape = _complex((self.mean.ravel() + b @ modes).reshape(len(z), -1, 2))
        c, t = _similarity(shape, z, w)
        return _real(c[:, None] * shape + t[:, None])

    def _solve_modes(
        self, local: np.ndarray, w: np.ndarray, scale2: np.ndarray, modes: np.ndarray
    ) -> np.ndarray:
        """MAP mode coefficients ``(B, M)`` for points ``(B, 2K)`` in the model frame,
        weights ``(B, K)``, squared pose scales ``(B,)`` and modes ``(M, 2K)``."""
        wk = np.repeat(w, 2, axis=1) * (scale2 / self.noise_var)[:, None]  # (B, 2K)
        # modes^T diag(wk) modes per batch row as one matmul (4x the speed of the 3-operand einsum)
        lhs = (modes * wk[:, None, :]) @ modes.T + np.diag(1.0 / self.variances)  # (B, M, M)
        rhs = (wk * (local - self.mean.ravel())) @ modes.T  # (B, M)
        return np.linalg.solve(lhs, rhs[..., None])[..., 0]

    def predict(self, points_mm: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Fit the model (similarity pose + clamped mode coefficients) to points ``(K, 2)``
        mm with weights ``(K,)`` in ``[0, 1]`` (default all 1); returns the model's position
        of every landmark ``(K, 2)`` in the points' frame."""
        w = np.ones(len(points_mm)) if weights is None else np.asarray(weights, dtype=np.float64)
        self._check(points_mm, w)
        return self.fit_batch(np.asarray(points_mm)[None], w[None])[0]

    def loo_predict(self, points_mm: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Leave-one-landmark-out predictions ``(K, 2)``: row ``i`` is landmark ``i`` of the
        model fitted to points ``(K, 2)`` with weights ``(K,)`` and the weight of ``i`` set to
        0, so a landmark never vouches for itself."""
        k = len(points_mm)
        w = np.ones(k) if weights is None else np.asarray(weights, dtype=np.float64)
        self._check(points_mm, w)
        batch_w = np.tile(w, (k, 1)) * (1.0 - np.eye(k))
        fits = self.fit_batch(np.broadcast_to(points_mm, (k, k, 2)), batch_w)
        return fits[np.arange(k), np.arange(k)]

    def _check(self, points: np.ndarray, weights: np.ndarray) -> None:
        k = self.num_landmarks
        if np.shape(points) != (k, 2) or np.shape(weights) != (k,):
            raise ValueError(
                f"expected points ({k}, 2) and weights ({k},), got {np.shape(points)}, {np.shape(weights)}"
            )

    def save(self, path: str | Path) -> Path:
        """Write the prior as an ``.npz`` atomically."""
        return save_npz(path, {key: np.asarray(getattr(self, key), dtype=np.float64) for key in _KEYS})

    @classmethod
    def load(cls, path: str | Path) -> ShapePrior:
        """Read a prior written by :meth:`save`; errors name the file."""
        values = load_npz(path, _KEYS, "a shape prior", "shape_prior")
        values["noise_var"] = float(values["noise_var"])
        return cls(**values)


def fit_prior_from_prepared(prepared: PreparedSet, **kwargs) -> ShapePrior:
    """:meth:`ShapePrior.fit` on the annotations of a prepared (training) set, in mm."""
    return ShapePrior.fit(prepared.landmarks_orig * prepared.spacing[:, None, None], **kwargs)


def top_k_peaks(log_heatmaps: np.ndarray, k: int, min_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest local maxima of each log-heatmap ``(K, h, w)``, greedily at least
    ``min_distance`` heatmap px apart (Chebyshev), refined sub-pixel by the DARK Taylor step
    of :class:`HeatmapCodec`. Returns coordinates ``(K, k, 2)`` heatmap px, best first, and
    their log values ``(K, k)``. Missing peaks are copies of the best with score ``-inf``.
    Flat regions (e.g. a clamped log floor) are not maxima; the best peak equals the arg-max
    that :meth:`HeatmapCodec.decode` refines unless that arg-max lies on a flat top."""
    logs = np.asarray(log_heatmaps, dtype=np.float64)
    px = np.zeros((len(logs), k), dtype=np.int64)
    py = np.zeros((len(logs), k), dtype=np.int64)
    scores = np.full((len(logs), k), -np.inf)
    for j, peaks in enumerate(_map_peaks(log_heatmaps, k, min_distance)):
        py[j], px[j] = peaks[0][0], peaks[0][1]  # pad with the best peak
        for r, (y, x) in enumerate(peaks):
            py[j, r], px[j, r], scores[j, r] = y, x, logs[j, y, x]
    coords = np.stack([px, py], axis=-1).astype(np.float64)
    for r in range(k):
        coords[:, r] += HeatmapCodec._taylor_offset(logs, px[:, r], py[:, r])
    return coords, scores


def _map_peaks(logs: np.ndarray, k: int, min_distance: int) -> list[list[tuple[int, int]]]:
    """Per map of ``logs (K, h, w)``: up to ``k`` integer peaks ``(y, x)``, best first (ties in
    raster order, like ``argmax``); the arg-max alone when the map has no strict maximum. The
    maxima come from cv2's max and min filters (scipy.ndimage's are 10x slower), in float32
    when the maps are float32 (a network's output: 8x faster than float64, and exact)."""
    size = 2 * max(int(min_distance), 1) + 1
    maps = np.asarray(logs)
    maps = maps if maps.dtype == np.float32 else maps.astype(np.float64)
    finite = np.where(np.isfinite(maps), maps, -np.inf).astype(maps.dtype)
    window = np.ones((size, size), np.uint8)
    w = finite.shape[2]
    out = []
    for log in finite:
        is_max = (log == cv2.dilate(log, window, borderType=cv2.BORDER_REPLICATE)) & (
            log > cv2.erode(log, window, borderType=cv2.BORDER_REPLICATE)
        )
        ys, xs = np.divmod(np.flatnonzero(is_max), w)
        order = np.argsort(-log[ys, xs], kind="stable")
        chosen: list[tuple[int, int]] = []
        for y, x in zip(ys[order], xs[order], strict=True):
            if all(max(abs(y - cy), abs(x - cx)) >= min_distance for cy, cx in chosen):
                chosen.append((int(y), int(x)))
                if len(chosen) == k:
                    break
        if not chosen:
            y, x = np.unravel_index(int(np.argmax(log)), log.shape)
            chosen.append((int(y), int(x)))
        out.append(chosen)
    return out


def choose_peaks(
    candidates_mm: np.ndarray,
    scores: np.ndarray,
    prior: ShapePrior,
    weight: float = 1.0,
    iterations: int = 3,
    keep_within_sd: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Choose one of ``k`` candidates ``(K, k, 2)`` mm (best-scoring first, log scores
    ``(K, k)``) per landmark. Returns the chosen index ``(K,)`` and positions ``(K, 2)`` mm.

    Starting from the top-1 candidates, each round predicts every landmark from the others
    (:meth:`ShapePrior.loo_predict`) and scores candidate ``c`` of landmark ``i`` as
    ``score - weight * 0.5 * (d / sd_i)^2``, ``d`` its distance to the prediction. The top-1
    candidate is kept while it lies within ``keep_within_sd * sd_i`` of the prediction;
    otherwise the best-scoring candidate wins. Fit weights start as the softmax share of
    the top-1 score among the candidates and are scaled by ``(3 sd / d)^2`` for landmarks
    still farther than 3 sd from their prediction. Stops when nothing changes.
    """
    cands = np.asarray(candidates_mm, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    sd = prior.residual_sd
    base = 1.0 / np.exp(scores - scores[:, :1]).sum(axis=1)  # softmax share of the top-1
    index = np.zeros(len(cands), dtype=np.int64)
    w = base
    for _ in range(max(iterations, 1)):
        chosen = cands[np.arange(len(cands)), index]
        pred = prior.loo_predict(chosen, w)
        dist = np.linalg.norm(cands - pred[:, None], axis=-1) / sd[:, None]  # (K, k) in sd
        objective = scores - weight * 0.5 * dist**2
        new = np.where(dist[:, 0] <= keep_within_sd, 0, np.argmax(objective, axis=1))
        d_new = dist[np.arange(len(cands)), new]
        new_w = base * np.minimum(1.0, (3.0 / np.maximum(d_new, _EPS)) ** 2)
        if np.array_equal(new, index) and np.allclose(new_w, w):
            break
        index, w = new, new_w
    return index, cands[np.arange(len(cands)), index]


def shape_consistent_decode(
    log_heatmaps: np.ndarray,
    codec: HeatmapCodec,
    prior: ShapePrior,
    to_mm: Callable[[np.ndarray], np.ndarray],
    k: int = 3,
    min_distance: int | None = None,
    weight: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode a batch of log-heatmaps ``(N, K, h, w)`` with :func:`choose_peaks`.

    ``to_mm`` maps network-input px ``(N, K, k, 2)`` of this batch to mm ``(N, K, k, 2)``
    (e.g. :func:`prepared_to_mm`). ``min_distance`` is in heatmap px (default
    ``ceil(3 * codec.sigma)``). Returns landmarks ``(N, K, 2)`` in network-input px, like
    :meth:`HeatmapCodec.decode`, and ``switched (N, K)``: where a peak other than the
    arg-max was chosen.
    """
    logs = np.asarray(log_heatmaps, dtype=np.float64)
    dist = math.ceil(3 * codec.sigma) if min_distance is None else int(min_distance)
    peaks = [top_k_peaks(m, k, dist) for m in np.asarray(log_heatmaps)]  # float32 stays float32
    cands = codec.to_input(np.stack([c for c, _ in peaks]))  # (N, K, k, 2) input px
    cands_mm = np.asarray(to_mm(cands), dtype=np.float64)
    rows = np.arange(logs.shape[1])
    coords, switched = np.empty(logs.shape[:2] + (2,)), np.zeros(logs.shape[:2], dtype=bool)
    for n, (_, scores) in enumerate(peaks):
        index, _ = choose_peaks(cands_mm[n], scores, prior, weight=weight)
        coords[n], switched[n] = cands[n, rows, index], index != 0
    return coords, switched


def prepared_to_mm(
    prepared: PreparedSet, index: Sequence[int] | np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """The ``to_mm`` of :func:`shape_consistent_decode` for images ``index`` of ``prepared``:
    network-input px ``(n, ..., 2)`` -> original px (letterbox inverse) -> mm."""
    index = np.asarray(index, dtype=np.int64)

    def to_mm(points: np.ndarray) -> np.ndarray:
        return np.stack(
            [
                prepared.letterbox(i).to_original(p) * prepared.spacing[i]
                for i, p in zip(index, points, strict=True)
            ]
        )

    return to_mm
