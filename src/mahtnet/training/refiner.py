"""Coarse-to-fine refinement: a second small network looks at a patch of the image at (near)
original resolution, centred on the coarse prediction of one landmark, and predicts a local
heatmap for it; the refined coordinate replaces the coarse one.

This module is the training side: the jitter model of the coarse errors, the patch dataset,
the network and its loss. The fine images and their patches (and the coordinate frames) are
:mod:`mahtnet.data.fine`; reading refined landmarks is :mod:`mahtnet.decoding`.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from mahtnet.data.fine import FineSet, extract_patch, patch_codec, patch_origin
from mahtnet.training.losses import softmax_ce

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


def select_landmark(logits: torch.Tensor, landmark: torch.Tensor) -> torch.Tensor:
    """``logits (B, K, P, P)`` -> ``(B, P, P)``: channel ``landmark[b]`` of item ``b``."""
    return logits[torch.arange(logits.shape[0], device=logits.device), landmark.to(logits.device).long()]


def refine_loss(
    logits: torch.Tensor, landmark: torch.Tensor, target: torch.Tensor, visible: torch.Tensor
) -> torch.Tensor:
    """Spatial-softmax KL (:func:`mahtnet.training.losses.softmax_ce`) of each item's own landmark
    channel against its target ``(B, P, P)``; averaged over visible items (0 when none)."""
    chosen = select_landmark(logits, landmark)[:, None]
    return softmax_ce(chosen, target[:, None].to(chosen.device), visible[:, None].to(chosen.device))
