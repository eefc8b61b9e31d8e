"""A trained model's card: the file, its sha256, what it expects and what it was trained on.

Torch-free, so the ONNX prediction path, the export stage and MLflow model logging share it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from mahtnet.codec import HeatmapCodec


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def training_data(meta: dict[str, Any]) -> str:
    """What a checkpoint was trained on, from the ``data`` params stored in its ``meta``."""
    d = (meta.get("params") or {}).get("data")
    if not d:
        return "unknown (checkpoint without params)"
    return (
        f"{d['dataset']} at {d['root']}, split {d['train_split']} (ground truth: {d['gt']}), "
        f"{d['val_fraction']:.0%} of it held out for validation"
    )


def card_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The part of a checkpoint's meta a deployed model needs (stored in the ONNX file): a
    coarse model's or, for ``meta["kind"] == "refiner"``, a refiner's (its input is a square
    patch at ``spacing_mm`` per pixel, its heatmaps at stride 1)."""
    if meta.get("kind") == "refiner":
        size = int(meta["patch_size"])
        return {
            "kind": "refiner",
            "architecture": "refiner",
            "input_size": [size, size],
            "heatmap": {"sigma": float(meta["sigma"]), "stride": 1},
            "spacing_mm": float(meta["spacing_mm"]),
            "landmark_names": list(meta["landmark_names"]),
            "training_data": training_data(meta),
            "stage": "refine",
        }
    return {
        "architecture": meta["model"]["name"] if isinstance(meta["model"], dict) else str(meta["model"]),
        "input_size": list(meta["input_size"]),
        "heatmap": {"sigma": float(meta["heatmap"]["sigma"]), "stride": int(meta["heatmap"]["stride"])},
        "landmark_names": list(meta["landmark_names"]),
        "training_data": training_data(meta),
        "stage": meta.get("stage"),
    }


def synthetic_warning(card: ModelCard) -> str | None:
    """A one-line warning when ``card`` says its model was trained on synthetic images (the
    ``dvc repro`` default), whose landmarks on real X-rays mean nothing; else None."""
    if not (card.training_data or "").startswith("synthetic"):
        return None
    return (
        f"warning: {card.file}: trained on synthetic images ({card.training_data}); its landmarks on "
        "real X-rays are not meaningful. Use the released model (mahtnet predict without --model) "
        "or one trained on real data (scripts/run_profile.py)"
    )


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """Who made a prediction: the model file and what it expects (a coarse model, or a
    refiner: ``kind``, with the patch resolution ``spacing_mm``)."""

    file: str
    sha256: str
    format: str  # pytorch | onnx
    architecture: str
    input_size: tuple[int, int]  # (H, W)
    sigma: float
    stride: int
    landmark_names: tuple[str, ...]
    training_data: str | None
    kind: str = "coarse"  # coarse | refiner
    spacing_mm: float | None = None  # refiner: mm per patch px

    @classmethod
    def from_meta(cls, path: str | Path, fmt: str, meta: dict[str, Any]) -> ModelCard:
        return cls(
            file=str(path),
            sha256=sha256(path),
            format=fmt,
            architecture=meta["architecture"],
            input_size=tuple(meta["input_size"]),
            sigma=float(meta["heatmap"]["sigma"]),
            stride=int(meta["heatmap"]["stride"]),
            landmark_names=tuple(meta["landmark_names"]),
            training_data=meta.get("training_data"),
            kind=meta.get("kind", "coarse"),
            spacing_mm=meta.get("spacing_mm"),
        )

    def codec(self) -> HeatmapCodec:
        return HeatmapCodec(self.input_size, self.sigma, self.stride)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        d["landmark_names"] = list(self.landmark_names)
        return d
