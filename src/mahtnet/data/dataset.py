"""Torch dataset over a :class:`PreparedSet`, with keypoint-aware augmentation."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from mahtnet.codec import HeatmapCodec  # noqa: E402
from mahtnet.config import AugmentParams  # noqa: E402
from mahtnet.data.preprocess import PreparedSet  # noqa: E402


def build_augmentation(p: AugmentParams, seed: int | None = None) -> A.Compose:
    """Affine (rotation, zoom, shift), brightness/contrast and Gaussian noise; keypoints
    follow the geometry and may leave the image (then masked out of the loss)."""
    return A.Compose(
        [
            A.Affine(
                rotate=(-p.rotate_deg, p.rotate_deg),
                scale=(1 - p.scale, 1 + p.scale),
                translate_percent=(-p.translate, p.translate),
                interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=p.p_affine,
            ),
            A.RandomBrightnessContrast(
                brightness_limit=p.brightness, contrast_limit=p.contrast, p=p.p_brightness_contrast
            ),
            A.GaussNoise(std_range=(0.0, p.noise_std), p=p.p_noise),
        ],
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
        seed=seed,
    )


def image_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(..., H, W)`` -> float ``(..., 1, H, W)`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(-3)


class LandmarkDataset(Dataset):
    """Items: ``image (1, H, W)``, ``target (K, h, w)``, ``visible (K,)``, ``landmarks (K, 2)``
    (prepared px, after augmentation) and ``index``.

    ``doctors``: the ``doctors`` label protocol: each item's labels are one doctor's annotation
    (senior or junior, ``default_rng((epoch seed, i))``), not ``data.landmarks``."""

    def __init__(
        self,
        data: PreparedSet,
        codec: HeatmapCodec,
        augment: A.Compose | None = None,
        targets: np.ndarray | None = None,
        doctors: bool = False,
    ):
        if targets is not None and augment is not None:
            raise ValueError("precomputed targets cannot follow an augmentation")
        if targets is not None and doctors:
            raise ValueError("precomputed targets cannot follow the doctors label protocol")
        if targets is not None and targets.shape[0] != len(data):
            raise ValueError(f"{targets.shape[0]} targets for {len(data)} images")
        self.data = data
        self.codec = codec
        self.augment = augment
        self.targets = targets
        self.doctors = doctors
        self.seed = 0

    def __len__(self) -> int:
        return len(self.data)

    def set_epoch_seed(self, seed: int) -> None:
        """Reseed the augmentation and the doctors' draw (the trainer calls this at every epoch
        start)."""
        self.seed = int(seed)
        if self.augment is not None:
            self.augment.set_random_seed(seed)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = self.data.images[i]
        points = self.data.landmarks[i] if not self.doctors else self.doctor_labels(i)
        if self.augment is not None:
            out = self.augment(image=image, keypoints=points.astype(np.float32))
            image, points = out["image"], np.asarray(out["keypoints"], dtype=np.float64)
        target, visible = self.codec.encode(points)
        if self.targets is not None:
            target = self.targets[i].astype(np.float32)
        return {
            "image": image_to_tensor(image),
            "target": torch.from_numpy(target),
            "visible": torch.from_numpy(visible),
            "landmarks": torch.from_numpy(points),
            "index": torch.tensor(i),
        }

    def doctor_labels(self, i: int) -> np.ndarray:
        """One doctor's annotation of image ``i`` in prepared px, drawn for this epoch."""
        who = np.random.default_rng((self.seed, int(i))).integers(2)
        points = (self.data.senior_orig, self.data.junior_orig)[who][i]
        return self.data.letterbox(i).to_prepared(points)
