"""One way to read landmarks: :class:`LandmarkReader`.

Built from a coarse backend (:mod:`mahtnet.decoding.backends`: PyTorch or onnxruntime, the
same interface) and, optionally, a shape prior, test-time augmentation and a refiner
backend. Evaluation, prediction, export parity, calibration, robustness, training's
validation and the benchmarks all read landmarks through it; no other module decodes a
heatmap. NumPy only: PyTorch is imported by a PyTorch backend, never here.

**Variants.** Each step adds to the previous one, and every step's landmarks are kept:

* ``coarse``: the arg-max of each heatmap, DARK sub-pixel (:meth:`HeatmapCodec.decode`);
* ``shape``: shape-consistent peak choice (:mod:`mahtnet.decoding.shape`), where the pixel
  spacing is known;
* ``refined``: the refiner on a patch at its resolution around the previous landmark, where
  the pixel spacing is known.

With TTA every coarse variant is the mean over the transforms of the landmarks mapped back.

**Confidence** (one definition): a landmark's confidence is the peak probability of the
heatmap that placed it (a spatial softmax) divided by the peak of that heatmap's training
target, a unit-mass Gaussian of its sigma (``1 / (2 pi sigma^2)``): about 1 when the network
is as sharp as what it was trained to draw, lower when it is unsure or torn between places.
For the coarse variants that is the coarse heatmap (averaged over TTA transforms), for refined
landmarks the refiner's patch heatmap: on the ISBI validation images (isbi-mean, seed 42) the
refiner's ranks the refined errors better (Spearman rho -0.56) than the coarse network's
(-0.26). With a calibration (:class:`mahtnet.analysis.calibration.ErrorCalibration`, fitted
on the variant the reader emits), each landmark also gets an expected error in mm.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from mahtnet.codec import HeatmapCodec
from mahtnet.data.fine import FineSet, extract_patch, fine_from_images, patch_origin
from mahtnet.data.preprocess import Letterbox, PreparedSet, letterbox_image
from mahtnet.decoding.shape import ShapePrior, shape_consistent_decode
from mahtnet.decoding.tta import (
    IDENTITY,
    about_centre,
    apply_affine,
    check_transform,
    invert_affine,
    warp_images,
)

VARIANTS = ("coarse", "shape", "refined")


def ideal_peak(sigma: float) -> float:
    """Peak probability of a unit-mass Gaussian of ``sigma`` px: the target's sharpness."""
    return 1.0 / (2.0 * math.pi * sigma**2)


def read_peaks(maps: np.ndarray, codec: HeatmapCodec, is_log: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps ``(..., K, h, w)`` -> landmarks ``(..., K, 2)`` input px (arg-max, DARK
    sub-pixel) and the peak values (the codec's decoding: the one place it is called)."""
    return codec.decode(maps, is_log=is_log)


def confidence_of(peak_log: np.ndarray, codec: HeatmapCodec) -> np.ndarray:
    """The confidence of log-heatmap peaks: peak probability / the target's peak."""
    return np.exp(peak_log) / ideal_peak(codec.sigma)


@dataclasses.dataclass
class Readout:
    """Landmarks of ``N`` images: each variant's ``(N, K, 2)`` original px, in order (an image
    a step skipped keeps the previous variant's landmarks), the confidence ``(N, K)``, each
    image's last variant, and the expected error ``(N, K)`` mm with a calibration."""

    landmarks: dict[str, np.ndarray]
    confidence: np.ndarray
    decoding: list[str]
    expected_error_mm: np.ndarray | None = None
    signals: dict[str, np.ndarray] | None = None  # (N, K) each: what tells a reading's trust (below)

    @property
    def final(self) -> np.ndarray:
        return self.landmarks[list(self.landmarks)[-1]]


class LandmarkReader:
    """Landmarks from a coarse ``backend`` with optional shape ``prior`` (``candidates``
    peaks per heatmap), TTA ``transforms`` (centre-relative 2x3 matrices from
    :func:`mahtnet.decoding.tta.tta_transforms`; ``None`` or identity only: off), ``refiner``
    backend and ``calibration``; ``batch_size`` images per forward pass, ``refine_batch_size``
    patches per refiner pass; ``adaptation``: a clinic's conventions
    (:class:`mahtnet.decoding.conventions.Convention`) added last, as the ``adapted`` variant,
    to every image whose pixel spacing is known."""

    def __init__(
        self,
        backend,
        prior: ShapePrior | None = None,
        refiner=None,
        transforms: Sequence[np.ndarray] | None = None,
        candidates: int = 3,
        calibration=None,
        batch_size: int = 8,
        refine_batch_size: int = 64,
        adaptation=None,
    ):
        self.backend, self.prior, self.refiner = backend, prior, refiner
        self.transforms = [check_transform(t) for t in (transforms if transforms is not None else [IDENTITY])]
        if not self.transforms:
            raise ValueError("no TTA transforms")
        self.candidates, self.calibration = candidates, calibration
        self.batch_size, self.refine_batch_size = batch_size, refine_batch_size
        self.adaptation = adaptation  # a clinic's Convention (decoding/conventions.py), or None
        self.codec: HeatmapCodec = backend.codec

    def variants(self) -> list[str]:
        """The variants this reader emits, in order."""
        variants = (
            ["coarse"] + ["shape"] * (self.prior is not None) + ["refined"] * (self.refiner is not None)
        )
        return variants + ["adapted"] * (self.adaptation is not None)

    # ------------------------------------------------------------------------- coarse

    def coarse(
        self, images: np.ndarray, boxes: Sequence[Letterbox], spacing: Sequence[float | None]
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Letterboxed images ``(N, H, W)`` uint8 (their ``boxes`` and mm per original px,
        None where unknown) -> the coarse variants' landmarks ``(N, K, 2)`` original px and
        the confidence ``(N, K)``."""
        images = np.asarray(images)
        if images.ndim != 3:
            raise ValueError(f"images must be (N, H, W), got shape {images.shape}")
        if tuple(images.shape[1:]) != self.codec.input_size:
            raise ValueError(f"images are {images.shape[1:]} but the model expects {self.codec.input_size}")
        runs = [self._one_transform(images, boxes, spacing, t) for t in self.transforms]
        points = np.stack([p for p, _ in runs]).mean(axis=0)  # (V, N, K, 2) input px
        conf = np.stack([c for _, c in runs]).mean(axis=0)
        names = [v for v in self.variants() if v != "adapted"][: len(points)]
        return {
            v: np.stack([b.to_original(p) for b, p in zip(boxes, points[i], strict=True)])
            for i, v in enumerate(names)
        }, conf

    def _one_transform(self, images, boxes, spacing, transform) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks ``(V, N, K, 2)`` input px (of the unwarped images) and confidence of one
        TTA transform."""
        identity = np.array_equal(transform, IDENTITY)
        matrix = None if identity else about_centre(transform, images.shape[1:])
        warped = images if identity else warp_images(images, matrix)
        inverse = None if identity else invert_affine(matrix)

        def back(p: np.ndarray) -> np.ndarray:  # warped input px -> input px
            return p if inverse is None else apply_affine(inverse, p)

        points, conf = [], []
        for start in range(0, len(images), self.batch_size):
            rows = range(start, min(start + self.batch_size, len(images)))
            logs = self.backend(warped[rows.start : rows.stop])
            coords, peak = read_peaks(logs, self.codec)
            variants = [back(coords)]
            if self.prior is not None:
                variants.append(
                    back(
                        self._shape(logs, coords, [boxes[i] for i in rows], [spacing[i] for i in rows], back)
                    )
                )
            points.append(np.stack(variants))
            conf.append(confidence_of(peak, self.codec))
        return np.concatenate(points, axis=1), np.concatenate(conf)

    def _shape(self, logs, coords, boxes, spacing, back) -> np.ndarray:
        """Shape-consistent landmarks (input px of the warped images) where the spacing is
        known; the arg-max elsewhere."""
        known = [i for i, s in enumerate(spacing) if s is not None]
        out = coords.copy()
        if not known:
            return out

        def to_mm(points: np.ndarray) -> np.ndarray:
            return np.stack(
                [boxes[i].to_original(back(p)) * spacing[i] for i, p in zip(known, points, strict=True)]
            )

        out[known] = shape_consistent_decode(logs[known], self.codec, self.prior, to_mm, k=self.candidates)[0]
        return out

    # ------------------------------------------------------------------------- refined

    def refine(self, fine: FineSet, points_orig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The refiner on ``points_orig (N, K, 2)``, original px of ``fine``'s images: refined
        landmarks and their confidence."""
        return refine_landmarks(self.refiner, fine, points_orig, self.refine_batch_size)

    # ------------------------------------------------------------------------- whole reads

    def read(
        self,
        images: np.ndarray,
        boxes: Sequence[Letterbox],
        spacing: Sequence[float | None],
        fine: FineSet | None = None,
    ) -> Readout:
        """Every variant of letterboxed ``images``; ``fine``: the images with a known spacing
        at the refiner's resolution, in order (needed with a refiner)."""
        landmarks, coarse_conf = self.coarse(images, boxes, spacing)
        conf = coarse_conf.copy()
        known = [i for i, s in enumerate(spacing) if s is not None]
        last = list(landmarks)[-1]
        decoding = [last if s is not None else "coarse" for s in spacing]
        if self.refiner is not None:
            refined = landmarks[list(landmarks)[-1]].copy()
            if known:
                if fine is None or len(fine) != len(known):
                    raise ValueError("the refiner needs the fine-resolution images of the read images")
                refined[known], conf[known] = self.refine(fine, refined[known])
                for i in known:
                    decoding[i] = "refined"
            landmarks["refined"] = refined
        if self.adaptation is not None:  # the clinic's conventions, where the spacing is known
            adapted = landmarks[list(landmarks)[-1]].copy()
            for i in known:
                adapted[i] = self.adaptation.apply(adapted[i], spacing[i])
                decoding[i] = "adapted"
            landmarks["adapted"] = adapted
        expected = None if self.calibration is None else self.calibration.expected_error(conf)
        signals = self.signals(landmarks, coarse_conf, spacing) if self.prior is not None else None
        return Readout(landmarks, conf, decoding, expected, signals)

    def signals(
        self, landmarks: dict[str, np.ndarray], coarse_conf: np.ndarray, spacing: Sequence[float | None]
    ) -> dict[str, np.ndarray]:
        """What tells a reading's trust, per image and landmark ``(N, K)`` (NaN where the
        spacing is unknown): the coarse heatmap's confidence; the distance of each arg-max
        landmark from the shape prior fitted to the whole arg-max configuration, and of each
        final (unadapted) landmark from where the prior puts it given the other landmarks,
        both in units of the prior's residual SD; and how far shape decoding and the refiner
        moved it (mm). All the prior's fits of a read in one batch."""
        n, k = coarse_conf.shape
        order = [v for v in landmarks if v != "adapted"]
        final, argmax = landmarks[order[-1]], landmarks["coarse"]
        shape = landmarks.get("shape", argmax)
        out = {
            name: np.full((n, k), np.nan)
            for name in ("argmax_residual_sd", "residual_sd", "shape_shift_mm", "refine_shift_mm")
        }
        out["coarse_confidence"] = np.asarray(coarse_conf, dtype=np.float64)
        known = [i for i, s in enumerate(spacing) if s is not None]
        if not known:
            return out
        s = np.array([spacing[i] for i in known])[:, None, None]
        a_mm, f_mm = argmax[known] * s, final[known] * s  # (n', K, 2)
        points = np.concatenate(
            [a_mm[:, None], np.repeat(f_mm[:, None], k, axis=1)], axis=1
        )  # (n', 1+K, K, 2)
        weights = np.concatenate([np.ones((1, k)), 1.0 - np.eye(k)])  # the whole shape, then leave-one-out
        fits = self.prior.fit_batch(points.reshape(-1, k, 2), np.tile(weights, (len(known), 1)))
        fits = fits.reshape(len(known), 1 + k, k, 2)
        sd = self.prior.residual_sd
        out["argmax_residual_sd"][known] = np.linalg.norm(fits[:, 0] - a_mm, axis=-1) / sd
        loo = fits[:, 1:][:, np.arange(k), np.arange(k)]  # (n', K, 2): landmark j from the others
        out["residual_sd"][known] = np.linalg.norm(loo - f_mm, axis=-1) / sd
        out["shape_shift_mm"][known] = np.linalg.norm(shape[known] - argmax[known], axis=-1) * s[:, :, 0]
        out["refine_shift_mm"][known] = np.linalg.norm(final[known] - shape[known], axis=-1) * s[:, :, 0]
        return out

    def read_prepared(self, data: PreparedSet, fine: FineSet | None = None) -> Readout:
        """Every variant of a prepared split (``fine``: the split at the refiner's resolution)."""
        if self.refiner is not None and (fine is None or list(fine.ids) != list(data.ids)):
            raise ValueError(
                "the refiner needs the fine-resolution images of the evaluated split (prepare_fine)"
            )
        boxes = [data.letterbox(i) for i in range(len(data))]
        return self.read(data.images, boxes, list(data.spacing), fine)

    def read_images(self, images: Sequence[np.ndarray], spacing: Sequence[float | None]) -> Readout:
        """Every variant of original images ``(H, W)`` uint8 of mm per px ``spacing`` (None
        where unknown: then neither shape decoding nor the refiner is applied)."""
        size = self.codec.input_size
        boxed = [letterbox_image(im, *size) for im in images]
        fine = None
        known = [i for i, s in enumerate(spacing) if s is not None]
        if self.refiner is not None and known:
            blank = np.zeros((len(known), self.num_landmarks, 2))  # new X-rays: no annotation
            fine = fine_from_images(
                [images[i] for i in known], [spacing[i] for i in known], self.refiner.card.spacing_mm, blank
            )
        return self.read(np.stack([im for im, _ in boxed]), [b for _, b in boxed], spacing, fine)

    @property
    def num_landmarks(self) -> int:
        card = getattr(self.backend, "card", None)
        if card is None:
            raise ValueError("a backend without a card: its landmark count is unknown")
        return len(card.landmark_names)


def refine_landmarks(
    refiner, fine: FineSet, points_orig: np.ndarray, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """A refiner backend on ``points_orig (N, K, 2)`` (original px of ``fine``'s images) ->
    the refined landmarks ``(N, K, 2)`` original px and their confidence ``(N, K)``. Each
    (image, landmark) gets the patch centred on its point; that landmark's map is decoded (DARK
    sub-pixel on the log-softmax) and mapped patch -> fine -> original px."""
    coarse = np.asarray(points_orig, dtype=np.float64)
    n, k = len(fine), fine.num_landmarks
    if coarse.shape != (n, k, 2):
        raise ValueError(f"coarse points {coarse.shape} do not match the data ({n}, {k}, 2)")
    size = refiner.codec.input_size[0]
    pairs = [(i, j) for i in range(n) for j in range(k)]
    origins = np.stack([patch_origin(fine.to_fine(i, coarse[i, j]), size) for i, j in pairs])
    refined, confidence = np.empty((n * k, 2)), np.empty(n * k)
    for start in range(0, len(pairs), batch_size):
        chunk = range(start, min(start + batch_size, len(pairs)))
        patches = np.stack([extract_patch(fine.image(pairs[m][0]), origins[m], size) for m in chunk])
        logp = refiner(patches, np.array([pairs[m][1] for m in chunk]))
        points, peak = read_peaks(logp, refiner.codec)
        refined[chunk.start : chunk.stop] = points + origins[chunk.start : chunk.stop]
        confidence[chunk.start : chunk.stop] = confidence_of(peak, refiner.codec)
    refined = refined.reshape(n, k, 2)
    return np.stack([fine.to_original(i, refined[i]) for i in range(n)]), confidence.reshape(n, k)
