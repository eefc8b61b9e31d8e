"""Images at a fixed physical resolution for the coarse-to-fine refinement (:class:`FineSet`),
and the patches cut from them. Torch-free: training (:mod:`mahtnet.training.refiner`) and reading
landmarks (:mod:`mahtnet.decoding`) share it.

Three coordinate frames, all ``(x, y)`` with pixel centres at integer positions (the project
convention, see :mod:`mahtnet.data.preprocess`):

* original px: the image as read from disk;
* fine px: the image resampled by ``s`` (:attr:`FineSet.scales`) to about ``spacing_mm`` per
  pixel, ``x_fine = (x_orig + 0.5) * s - 0.5`` (what ``cv2.resize`` with ``fx = fy = s`` does);
* patch px: a ``size x size`` crop of the fine image with integer top-left ``origin`` (fine
  px), ``x_patch = x_fine - origin`` exactly (no interpolation; training patches may also be
  rotated and zoomed about their centre, see :class:`mahtnet.training.refiner.PatchDataset`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from mahtnet.codec import HeatmapCodec
from mahtnet.data.isbi import Sample, read_image
from mahtnet.io import load_npz, save_npz

# ----------------------------------------------------------------------------- fine images


@dataclasses.dataclass
class FineSet:
    """Every image of a split at a fixed physical resolution (never upsampled).

    Shapes: ``ids (N,)``, ``images (N, Hmax, Wmax)`` uint8 zero-padded at the bottom/right,
    ``sizes (N, 2)`` the valid ``(h, w)`` of each, ``scales (N,)`` fine px per original px,
    ``landmarks_orig (N, K, 2)`` original px, ``spacing (N,)`` original mm per px,
    ``senior_orig`` / ``junior_orig (N, K, 2)`` each doctor's annotation (the ``doctors`` labels).
    """

    ids: np.ndarray
    images: np.ndarray
    sizes: np.ndarray
    scales: np.ndarray
    landmarks_orig: np.ndarray
    spacing: np.ndarray
    senior_orig: np.ndarray
    junior_orig: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_landmarks(self) -> int:
        return int(self.landmarks_orig.shape[1])

    @property
    def fine_spacing(self) -> np.ndarray:
        """mm per fine px ``(N,)``."""
        return self.spacing / self.scales

    def image(self, i: int) -> np.ndarray:
        """The valid part ``(h, w)`` of image ``i`` (a view)."""
        h, w = (int(v) for v in self.sizes[i])
        return self.images[i, :h, :w]

    def to_fine(self, i: int, points_orig: np.ndarray) -> np.ndarray:
        """Original px ``(..., 2)`` of image ``i`` -> fine px."""
        return (np.asarray(points_orig, dtype=np.float64) + 0.5) * float(self.scales[i]) - 0.5

    def to_original(self, i: int, points_fine: np.ndarray) -> np.ndarray:
        """Fine px ``(..., 2)`` of image ``i`` -> original px (inverse of :meth:`to_fine`)."""
        return (np.asarray(points_fine, dtype=np.float64) + 0.5) / float(self.scales[i]) - 0.5

    def landmarks_fine(self, i: int) -> np.ndarray:
        """Ground truth ``(K, 2)`` of image ``i`` in fine px."""
        return self.to_fine(i, self.landmarks_orig[i])

    def subset(self, index: Sequence[int] | np.ndarray) -> FineSet:
        index = np.asarray(index, dtype=np.int64)
        return FineSet(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})

    def save(self, path: str | Path) -> Path:
        return save_npz(path, dataclasses.asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> FineSet:
        keys = [f.name for f in dataclasses.fields(cls)]
        return cls(**load_npz(path, keys, "fine-resolution data", "prepare_fine"))


def fine_scale(orig_spacing_mm: float, spacing_mm: float) -> float:
    """Fine px per original px: ``min(1, orig_spacing / spacing_mm)`` (never upsample)."""
    if spacing_mm <= 0 or orig_spacing_mm <= 0:
        raise ValueError(f"pixel spacings must be positive, got {orig_spacing_mm} and {spacing_mm}")
    return min(1.0, float(orig_spacing_mm) / float(spacing_mm))


def resample(image: np.ndarray, scale: float) -> np.ndarray:
    """``image (H, W)`` resized by exactly ``scale`` (``cv2.INTER_AREA``; a copy at 1). The
    output is ``round(H * scale) x round(W * scale)`` and pixel centres map as
    ``x' = (x + 0.5) * scale - 0.5`` (``fx``/``fy`` are passed, so cv2 uses this exact scale
    rather than the one implied by the rounded output size)."""
    if scale >= 1.0:
        return image.copy()
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def prepare_fine(samples: Sequence[Sample], spacing_mm: float) -> FineSet:
    """Load every sample and resample it to ``spacing_mm`` per pixel (or keep it when the
    dataset is coarser than that)."""
    if not samples:
        raise ValueError("prepare_fine needs at least one sample")
    return fine_from_images(
        [read_image(s.image_path) for s in samples],
        [s.pixel_spacing_mm for s in samples],
        spacing_mm,
        np.stack([s.landmarks for s in samples]),
        ids=[s.image_id for s in samples],
        doctors=(np.stack([s.senior for s in samples]), np.stack([s.junior for s in samples])),
    )


def fine_from_images(
    images: Sequence[np.ndarray],
    spacings_mm: Sequence[float],
    spacing_mm: float,
    landmarks: np.ndarray,
    ids: Sequence[str] | None = None,
    doctors: tuple[np.ndarray, np.ndarray] | None = None,
) -> FineSet:
    """Images ``(H, W)`` of pixel spacings ``spacings_mm`` resampled to ``spacing_mm`` (never
    upsampled), with their landmarks ``(N, K, 2)`` original px (zeros for new X-rays) and each
    doctor's (default: the landmarks)."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    senior, junior = doctors if doctors is not None else (landmarks, landmarks)
    scales = [fine_scale(orig, spacing_mm) for orig in spacings_mm]
    images = [resample(im, scale) for im, scale in zip(images, scales, strict=True)]
    sizes = np.array([im.shape[:2] for im in images], dtype=np.int64)
    canvas = np.zeros((len(images), *sizes.max(axis=0)), dtype=np.uint8)
    for i, im in enumerate(images):
        canvas[i, : im.shape[0], : im.shape[1]] = im
    return FineSet(
        ids=np.array(ids if ids is not None else [str(i) for i in range(len(images))]),
        images=canvas,
        sizes=sizes,
        scales=np.array(scales, dtype=np.float64),
        landmarks_orig=landmarks,
        spacing=np.array(spacings_mm, dtype=np.float64),
        senior_orig=np.asarray(senior, dtype=np.float64),
        junior_orig=np.asarray(junior, dtype=np.float64),
    )


# ----------------------------------------------------------------------------- patches


def patch_origin(centre_fine: np.ndarray, size: int) -> np.ndarray:
    """Integer top-left ``(..., 2)`` (fine px) of the ``size`` patch centred on ``centre_fine
    (..., 2)``: ``round(centre) - size // 2`` (halves round up). The centre lies at patch px
    ``size // 2 + (centre - round(centre))``, within half a pixel of ``size // 2``."""
    c = np.asarray(centre_fine, dtype=np.float64)
    if not np.all(np.isfinite(c)):
        raise ValueError("patch centres must be finite")
    return np.floor(c + 0.5).astype(np.int64) - size // 2


def extract_patch(image: np.ndarray, origin: np.ndarray, size: int) -> np.ndarray:
    """The ``(size, size)`` crop of ``image (H, W)`` whose top-left pixel is ``origin = (x0,
    y0)`` (integers, may lie outside the image); pixels outside the image are 0. Patch px
    ``p`` is image px ``p + origin``."""
    x0, y0 = (int(v) for v in np.asarray(origin).reshape(2))
    h, w = image.shape[:2]
    out = np.zeros((size, size, *image.shape[2:]), dtype=image.dtype)
    xa, xb = max(x0, 0), min(x0 + size, w)
    ya, yb = max(y0, 0), min(y0 + size, h)
    if xa < xb and ya < yb:
        out[ya - y0 : yb - y0, xa - x0 : xb - x0] = image[ya:yb, xa:xb]
    return out


def patch_codec(size: int, sigma: float) -> HeatmapCodec:
    """The codec of ``size x size`` patches (stride 1, ``sigma`` in fine px)."""
    return HeatmapCodec((size, size), sigma, 1)
