"""Coarse-to-fine refinement: a second small network looks at a patch of the image at (near)
original resolution, centred on the coarse prediction of one landmark, and predicts a local
heatmap for it; the refined coordinate replaces the coarse one.

Three coordinate frames, all ``(x, y)`` with pixel centres at integer positions (the project
convention, see :mod:`mahtnet.data.preprocess`):

* original px: the image as read from disk;
* fine px: the image resampled by ``s`` (:attr:`FineSet.scales`) to about ``spacing_mm`` per
  pixel, ``x_fine = (x_orig + 0.5) * s - 0.5`` (what ``cv2.resize`` with ``fx = fy = s`` does);
* patch px: a ``size x size`` crop of the fine image with integer top-left ``origin`` (fine
  px), ``x_patch = x_fine - origin`` exactly (no interpolation; training patches may also be
  rotated and zoomed about their centre, see :class:`PatchDataset`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from mahtnet.codec import HeatmapCodec
from mahtnet.data.isbi import Sample, read_image
from mahtnet.io import load_npz, save_npz
from mahtnet.losses import softmax_ce
from mahtnet.models.unet import UNet

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


# ----------------------------------------------------------------------------- jitter


@dataclasses.dataclass
class JitterModel:
    """Per-landmark, per-axis standard deviations ``sd_mm (K, 2)`` of a zero-mean Gaussian
    displacement: the training patches are centred on ``gt + jitter`` to mimic the coarse
    model's errors."""

    sd_mm: np.ndarray

    def __post_init__(self) -> None:
        self.sd_mm = np.asarray(self.sd_mm, dtype=np.float64)
        if self.sd_mm.ndim != 2 or self.sd_mm.shape[1] != 2:
            raise ValueError(f"jitter sd must be (K, 2), got {self.sd_mm.shape}")
        if not np.all(np.isfinite(self.sd_mm)) or np.any(self.sd_mm < 0):
            raise ValueError("jitter sd must be finite and non-negative")

    @classmethod
    def fit(cls, errors_mm: np.ndarray, scale: float = 1.0, floor_mm: float = 0.0) -> JitterModel:
        """``errors_mm (N, K, 2)`` signed ``pred - gt`` in mm (NaN ignored) -> ``sd = max(floor,
        scale * RMS)`` per landmark and axis (RMS, not SD: a bias widens the jitter too)."""
        e = np.asarray(errors_mm, dtype=np.float64)
        if e.ndim != 3 or e.shape[2] != 2:
            raise ValueError(f"errors must be (N, K, 2), got {e.shape}")
        if np.any(np.all(np.isnan(e), axis=0)):
            raise ValueError("a landmark has no finite error to fit the jitter to")
        rms = np.sqrt(np.nanmean(e**2, axis=0))
        return cls(np.maximum(floor_mm, scale * rms))

    def sample(self, rng: np.random.Generator, k: np.ndarray) -> np.ndarray:
        """Displacements ``(M, 2)`` mm for landmark indices ``k (M,)``."""
        k = np.asarray(k, dtype=np.int64).reshape(-1)
        return rng.standard_normal((len(k), 2)) * self.sd_mm[k]

    def to_dict(self) -> dict:
        return {"sd_mm": self.sd_mm.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> JitterModel:
        return cls(np.asarray(d["sd_mm"], dtype=np.float64))


# ----------------------------------------------------------------------------- dataset


class PatchDataset(Dataset):
    """One item per (image, landmark) pair of a :class:`FineSet` (index ``i * K + k``): the
    ``size`` patch centred on the ground truth (or on ``centres_orig (N, K, 2)``, original px,
    when given) plus a jitter (mm, drawn from ``jitter``; none when ``jitter`` is None),
    optionally with a random rotation (``U(-rotate_deg, rotate_deg)``) and zoom (factor ``U(1 -
    zoom, 1 + zoom)``) of the patch about its centre, the target moving with it, and with
    brightness/contrast augmentation (``v * c + b``, ``c ~ U(1 - contrast, 1 + contrast)``,
    ``b ~ U(-brightness, brightness)``, clipped to [0, 1]; geometry untouched).

    Items: ``image (1, P, P)`` float32 in [0, 1], ``target (P, P)`` float32 unit-peak Gaussian
    of ``sigma`` fine px at ``gt``, ``landmark`` long, ``gt (2,)`` float64 patch px,
    ``visible`` bool (gt inside the patch), ``origin (2,)`` long fine px, ``jitter (2,)``
    float64 fine px (requested displacement of the patch centre), ``index`` long image index.
    Without rotation or zoom, patch px ``p`` is fine px ``p + origin`` exactly; with them, fine
    px ``A p + origin + (I - A) (size // 2)`` with ``A = rotation / zoom`` (bilinear).

    ``doctors``: the ``doctors`` label protocol: the ground truth of each item is one doctor's
    annotation (senior or junior, the item's first draw) rather than ``landmarks_orig``.

    Randomness: item ``j`` draws from ``default_rng((seed, j))``, so it is the same for any
    worker count and order; call :meth:`set_epoch_seed` (e.g. ``base + epoch``) before each
    epoch's iterator is created (not with ``persistent_workers``, whose copies would keep
    the old seed).
    """

    def __init__(
        self,
        fine: FineSet,
        size: int,
        sigma: float,
        jitter: JitterModel | None = None,
        brightness: float = 0.0,
        contrast: float = 0.0,
        seed: int = 0,
        centres_orig: np.ndarray | None = None,
        rotate_deg: float = 0.0,
        zoom: float = 0.0,
        doctors: bool = False,
    ):
        if centres_orig is not None and np.shape(centres_orig) != fine.landmarks_orig.shape:
            raise ValueError(
                f"centres {np.shape(centres_orig)} do not match the data {fine.landmarks_orig.shape}"
            )
        if jitter is not None and jitter.sd_mm.shape[0] != fine.num_landmarks:
            raise ValueError(f"jitter has {jitter.sd_mm.shape[0]} landmarks, data {fine.num_landmarks}")
        if brightness < 0 or contrast < 0 or contrast >= 1:
            raise ValueError(f"need brightness >= 0 and 0 <= contrast < 1, got {brightness}, {contrast}")
        if rotate_deg < 0 or not 0 <= zoom < 1:
            raise ValueError(f"need rotate_deg >= 0 and 0 <= zoom < 1, got {rotate_deg}, {zoom}")
        self.fine = fine
        self.size = int(size)
        self.codec = patch_codec(self.size, sigma)
        self.jitter = jitter
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.seed = int(seed)
        self.rotate_deg = float(rotate_deg)
        self.zoom = float(zoom)
        self.centres_orig = None if centres_orig is None else np.asarray(centres_orig, dtype=np.float64)
        self.doctors = doctors

    def set_epoch_seed(self, seed: int) -> None:
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.fine) * self.fine.num_landmarks

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        if not 0 <= j < len(self):
            raise IndexError(j)
        i, k = divmod(int(j), self.fine.num_landmarks)
        rng = np.random.default_rng((self.seed, int(j)))
        labels = self.fine.landmarks_orig
        if self.doctors:
            labels = (self.fine.senior_orig, self.fine.junior_orig)[rng.integers(2)]
        gt_fine = self.fine.to_fine(i, labels[i, k])
        shift = np.zeros(2)
        if self.centres_orig is not None:  # e.g. the coarse model's predictions (validation)
            shift = self.fine.to_fine(i, self.centres_orig[i, k]) - gt_fine
        if self.jitter is not None:
            shift = shift + self.jitter.sample(rng, np.array([k]))[0] * (
                self.fine.scales[i] / self.fine.spacing[i]
            )
        origin = patch_origin(gt_fine + shift, self.size)
        if self.rotate_deg > 0 or self.zoom > 0:
            image, gt = self._warped(self.fine.image(i), origin, gt_fine, rng)
        else:
            gt = gt_fine - origin
            image = extract_patch(self.fine.image(i), origin, self.size)
        image = image.astype(np.float32) / 255.0
        if self.brightness > 0 or self.contrast > 0:
            c = rng.uniform(1 - self.contrast, 1 + self.contrast)
            b = rng.uniform(-self.brightness, self.brightness)
            image = np.clip(image * np.float32(c) + np.float32(b), 0.0, 1.0)
        target, visible = self.codec.encode(gt[None])
        return {
            "image": torch.from_numpy(image)[None],
            "target": torch.from_numpy(target[0]),
            "landmark": torch.tensor(k, dtype=torch.long),
            "gt": torch.from_numpy(gt),
            "visible": torch.tensor(bool(visible[0])),
            "origin": torch.from_numpy(origin),
            "jitter": torch.from_numpy(shift),
            "index": torch.tensor(i, dtype=torch.long),
        }

    def _warped(
        self, image: np.ndarray, origin: np.ndarray, gt_fine: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """The patch rotated and zoomed about its centre (pixels outside the image 0) and the
        ground truth in its px."""
        angle = np.deg2rad(rng.uniform(-self.rotate_deg, self.rotate_deg))
        zoom = rng.uniform(1 - self.zoom, 1 + self.zoom)
        cos, sin = np.cos(angle), np.sin(angle)
        a = np.array([[cos, -sin], [sin, cos]]) / zoom  # patch px -> fine px, about the centre
        centre = np.full(2, self.size // 2, dtype=np.float64)
        t = origin + centre - a @ centre
        patch = cv2.warpAffine(
            image,
            np.hstack([a, t[:, None]]),
            (self.size, self.size),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        return patch, np.linalg.solve(a, gt_fine - t)


# ----------------------------------------------------------------------------- model, loss


def build_refiner(num_landmarks: int, channels: int, depth: int) -> UNet:
    """The refinement network: a :class:`UNet` on one-channel patches with one heatmap
    (logits) per landmark; patch sizes must be divisible by ``2**depth``."""
    return UNet(1, num_landmarks, channels, depth)


def _logits(output) -> torch.Tensor:
    """Heatmap logits ``(B, K, P, P)`` of a model output (a ``LandmarkOutput`` or a tensor)."""
    return output.heatmaps if hasattr(output, "heatmaps") else output


def select_landmark(logits: torch.Tensor, landmark: torch.Tensor) -> torch.Tensor:
    """``logits (B, K, P, P)`` -> ``(B, P, P)``: channel ``landmark[b]`` of item ``b``."""
    return logits[torch.arange(logits.shape[0], device=logits.device), landmark.to(logits.device).long()]


def refine_loss(
    logits: torch.Tensor, landmark: torch.Tensor, target: torch.Tensor, visible: torch.Tensor
) -> torch.Tensor:
    """Spatial-softmax KL (:func:`mahtnet.losses.softmax_ce`) of each item's own landmark
    channel against its target ``(B, P, P)``; averaged over visible items (0 when none)."""
    chosen = select_landmark(logits, landmark)[:, None]
    return softmax_ce(chosen, target[:, None].to(chosen.device), visible[:, None].to(chosen.device))


# ----------------------------------------------------------------------------- inference


@torch.no_grad()
def refine_points(
    model: nn.Module,
    fine: FineSet,
    coarse_orig: np.ndarray,
    size: int,
    codec: HeatmapCodec,
    device: torch.device | str,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Refine ``coarse_orig (N, K, 2)`` (original px of ``fine``'s images) -> ``(refined_orig
    (N, K, 2), confidence (N, K))``. Each (image, landmark) gets the ``size`` patch centred on
    its coarse point; that landmark's channel is decoded with ``codec`` (DARK sub-pixel on the
    log-softmax) and mapped patch -> fine -> original px. ``confidence``: peak probability of
    the spatial softmax. The model is run in eval mode (its mode is restored afterwards)."""
    coarse = np.asarray(coarse_orig, dtype=np.float64)
    n, k = len(fine), fine.num_landmarks
    if coarse.shape != (n, k, 2):
        raise ValueError(f"coarse points {coarse.shape} do not match the data ({n}, {k}, 2)")
    if codec.input_size != (size, size) or codec.stride != 1:
        raise ValueError(f"codec {codec} does not decode {size}x{size} patches at stride 1")
    pairs = [(i, j) for i in range(n) for j in range(k)]
    origins = np.stack([patch_origin(fine.to_fine(i, coarse[i, j]), size) for i, j in pairs])
    refined = np.empty((n * k, 2))
    confidence = np.empty(n * k)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(pairs), batch_size):
            chunk = range(start, min(start + batch_size, len(pairs)))
            patches = np.stack([extract_patch(fine.image(pairs[m][0]), origins[m], size) for m in chunk])
            x = torch.from_numpy(patches).to(device=device, dtype=torch.float32).div_(255.0)[:, None]
            landmark = torch.tensor([pairs[m][1] for m in chunk], device=device)
            maps = select_landmark(_logits(model(x)).float(), landmark)  # (B, P, P)
            logp = F.log_softmax(maps.reshape(len(chunk), -1), dim=-1).reshape(maps.shape)
            points, peak = codec.decode(logp.cpu().numpy(), is_log=True)
            refined[chunk.start : chunk.stop] = points + origins[chunk.start : chunk.stop]
            confidence[chunk.start : chunk.stop] = np.exp(peak)
    finally:
        model.train(was_training)
    refined = refined.reshape(n, k, 2)
    refined_orig = np.stack([fine.to_original(i, refined[i]) for i in range(n)])
    return refined_orig, confidence.reshape(n, k)
