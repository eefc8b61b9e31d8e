"""Resize-with-padding ("letterbox") to the network input and the exact coordinate mapping.

Coordinate convention (everywhere in MAHT-Net): ``(x, y)`` order, pixel centres at integer
positions. Under a resize by ``s`` a pixel centre maps as ``x' = (x + 0.5) * s - 0.5``, which
is what ``cv2.resize`` does, so prepared <-> original coordinates map back exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mahtnet.config import DataParams
from mahtnet.data.isbi import Sample, list_split, read_image
from mahtnet.io import load_npz, save_npz


@dataclasses.dataclass(frozen=True)
class Letterbox:
    """How one original image was placed into the network input."""

    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int
    orig_w: int
    orig_h: int

    def to_prepared(self, points: np.ndarray) -> np.ndarray:
        """Original px ``(..., 2)`` -> prepared (network input) px."""
        scale = np.array([self.scale_x, self.scale_y])
        pad = np.array([self.pad_x, self.pad_y])
        return (np.asarray(points, dtype=np.float64) + 0.5) * scale - 0.5 + pad

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Prepared px ``(..., 2)`` -> original px (inverse of :meth:`to_prepared`)."""
        scale = np.array([self.scale_x, self.scale_y])
        pad = np.array([self.pad_x, self.pad_y])
        return (np.asarray(points, dtype=np.float64) - pad + 0.5) / scale - 0.5

    def as_array(self) -> np.ndarray:
        return np.array(dataclasses.astuple(self), dtype=np.float64)

    @classmethod
    def from_array(cls, a: Sequence[float]) -> Letterbox:
        sx, sy, px, py, w, h = (float(v) for v in a)
        return cls(sx, sy, int(px), int(py), int(w), int(h))


def fit_letterbox(orig_h: int, orig_w: int, height: int, width: int) -> Letterbox:
    """Largest aspect-preserving fit of ``orig`` into ``(height, width)``, centred."""
    s = min(width / orig_w, height / orig_h)
    new_w = min(width, max(1, round(orig_w * s)))
    new_h = min(height, max(1, round(orig_h * s)))
    return Letterbox(
        scale_x=new_w / orig_w,
        scale_y=new_h / orig_h,
        pad_x=(width - new_w) // 2,
        pad_y=(height - new_h) // 2,
        orig_w=orig_w,
        orig_h=orig_h,
    )


def letterbox_image(image: np.ndarray, height: int, width: int) -> tuple[np.ndarray, Letterbox]:
    """Resize ``image (H, W)`` into a zero-padded ``(height, width)`` canvas."""
    box = fit_letterbox(image.shape[0], image.shape[1], height, width)
    new_w = round(box.orig_w * box.scale_x)
    new_h = round(box.orig_h * box.scale_y)
    shrink = new_w < box.orig_w
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interp)
    canvas = np.zeros((height, width), dtype=image.dtype)
    canvas[box.pad_y : box.pad_y + new_h, box.pad_x : box.pad_x + new_w] = resized
    return canvas, box


@dataclasses.dataclass
class PreparedSet:
    """Images at the network input size with everything needed to map back.

    Shapes: ``images (N, H, W)`` uint8, ``landmarks (N, K, 2)`` prepared px,
    ``landmarks_orig (N, K, 2)`` original px, ``boxes (N, 6)`` (see :class:`Letterbox`),
    ``spacing (N,)`` mm per original pixel, ``ids (N,)``.
    """

    ids: np.ndarray
    images: np.ndarray
    landmarks: np.ndarray
    landmarks_orig: np.ndarray
    boxes: np.ndarray
    spacing: np.ndarray
    senior_orig: np.ndarray
    junior_orig: np.ndarray
    official_orig: np.ndarray  # the dataset's official ground truth (isbi.OFFICIAL_GT): scored

    def __len__(self) -> int:
        return len(self.ids)

    def letterbox(self, i: int) -> Letterbox:
        return Letterbox.from_array(self.boxes[i])

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Prepared px ``(N, K, 2)`` for every image -> original px."""
        return np.stack([self.letterbox(i).to_original(p) for i, p in enumerate(points)])

    def subset(self, index: Sequence[int] | np.ndarray) -> PreparedSet:
        index = np.asarray(index, dtype=np.int64)
        return PreparedSet(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})

    def save(self, path: str | Path) -> Path:
        return save_npz(path, dataclasses.asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> PreparedSet:
        keys = [f.name for f in dataclasses.fields(cls)]
        return cls(**load_npz(path, keys, "prepared data", "preprocess"))


def prepare(samples: Sequence[Sample], height: int, width: int) -> PreparedSet:
    """Load, letterbox and record the mapping of every sample."""
    return prepare_images(
        [s.image_id for s in samples],
        [read_image(s.image_path) for s in samples],
        [s.landmarks for s in samples],
        [s.pixel_spacing_mm for s in samples],
        height,
        width,
        doctors=([s.senior for s in samples], [s.junior for s in samples]),
        official=[s.official for s in samples],
    )


def prepare_images(
    ids: Sequence[str],
    images: Sequence[np.ndarray],
    landmarks: Sequence[np.ndarray],
    spacing: Sequence[float],
    height: int,
    width: int,
    doctors: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
    official: Sequence[np.ndarray] | None = None,
) -> PreparedSet:
    """Letterbox original images ``(H, W)`` with their landmarks ``(K, 2)`` (original px) and
    spacing (mm/px); ``doctors``: each one's annotation, ``official``: the scored ground truth
    (default: the landmarks)."""
    senior, junior = doctors or (landmarks, landmarks)
    official = landmarks if official is None else official
    prepared, lms, boxes = [], [], []
    for image, points in zip(images, landmarks, strict=True):
        small, box = letterbox_image(image, height, width)
        prepared.append(small)
        lms.append(box.to_prepared(points))
        boxes.append(box.as_array())
    return PreparedSet(
        ids=np.array(list(ids)),
        images=np.stack(prepared),
        landmarks=np.stack(lms).astype(np.float64),
        landmarks_orig=np.stack(landmarks).astype(np.float64),
        boxes=np.stack(boxes),
        spacing=np.array(spacing, dtype=np.float64),
        senior_orig=np.stack(senior).astype(np.float64),
        junior_orig=np.stack(junior).astype(np.float64),
        official_orig=np.stack(official).astype(np.float64),
    )


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic random split of ``n`` training images into (train, val) indices."""
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n_val == 0:
        n_val = 1
    if n_val >= n:
        raise ValueError(f"val_fraction {val_fraction} leaves no training images out of {n}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def split_key(split: str) -> str:
    """The name of a dataset split in metrics and files: ``Test2Data`` -> ``test2``, a list
    file's ``cv4/set1/val`` -> ``cv4-set1-val``."""
    return split.removesuffix("Data").lower().replace("/", "-")


def prepare_splits(d: DataParams, seed: int, make: Callable[[list[Sample]], Any]) -> dict[str, Any]:
    """``{"train", "val", "test", <extra>...}``: the sets ``make`` builds from the samples of
    ``d``'s training and test splits, the validation images carved from the training split by
    :func:`split_train_val` (so every kind of set, e.g. prepared and fine-resolution, holds the
    same images in each split; drawn with ``d.split_seed``, or ``seed`` when that is None); each of
    ``d.extra_test_splits`` under its :func:`split_key`."""
    training = make(list_split(d.root, d.train_split, d.gt, d.dataset))
    test = make(list_split(d.root, d.test_split, d.gt, d.dataset))
    draw = seed if d.split_seed is None else d.split_seed  # data.split_seed: one split across seeds
    train_idx, val_idx = split_train_val(len(training), d.val_fraction, draw)
    sets = {"train": training.subset(train_idx), "val": training.subset(val_idx), "test": test}
    for split in d.extra_test_splits:
        key = split_key(split)
        if key in sets or key == split_key(d.test_split):
            raise ValueError(f"data.extra_test_splits: {split!r} repeats a split")
        sets[key] = make(list_split(d.root, split, d.gt, d.dataset))
    return sets
