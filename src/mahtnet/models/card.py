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


def training_data(params: dict[str, Any] | None) -> str:
    """What a checkpoint was trained on, from the ``data`` params stored with it (the dataset,
    split, ground truth and validation share; not the folder, a path of the training machine)."""
    d = (params or {}).get("data")
    if not d:
        return "unknown (checkpoint without params)"
    return (
        f"{d['dataset']}, split {d['train_split']} (ground truth: {d['gt']}), "
        f"{d['val_fraction']:.0%} of it held out for validation"
    )


TRAINING_RECORD = ("epoch", "val", "averaged_epochs")  # what the trainer adds to a stage's card


@dataclasses.dataclass(frozen=True)
class CheckpointCard:
    """A checkpoint's metadata, typed: the one reader (:meth:`of`) and writer (:meth:`to_meta`)
    of the ``meta`` dict of a checkpoint (:func:`mahtnet.models.checkpoint.save_checkpoint`), for
    coarse models and refiners alike; a training stage's card is its
    :class:`mahtnet.training.task.TrainTask`'s, with the epoch of the written weights added.

    A refiner reads square patches (``input_size`` ``(P, P)``) at ``spacing_mm`` per pixel,
    its heatmaps at stride 1, and records its coarse model and the jitter it was trained with."""

    kind: str  # coarse | refiner
    architecture: str  # unet | maht_net | refiner
    model: dict[str, Any]  # the model block it was built from (architecture keys, "name")
    input_size: tuple[int, int]  # (H, W)
    sigma: float  # heatmap sigma (heatmap px)
    stride: int  # input px per heatmap px
    output_kind: str  # logits | heatmap (mahtnet.models.head.log_heatmaps)
    landmark_names: tuple[str, ...]
    stage: str | None = None
    params: dict[str, Any] | None = None  # every parameter of the training run
    pruned: dict[str, Any] | None = None  # channel pruning (sparsity...), None when unpruned
    bypass_transformer: bool = False
    spacing_mm: float | None = None  # refiner: mm per patch px
    jitter: dict[str, Any] | None = None  # refiner: the coarse-error model of its training patches
    coarse_checkpoint: str | None = None  # refiner: its coarse model's file at training time
    coarse_val_mre_mm: float | None = None  # refiner: its coarse model's validation MRE
    epoch: int | None = None  # the epoch of the written weights (the best one)
    val: dict[str, Any] | None = None  # their validation metrics
    averaged_epochs: list[int] | None = None  # the epochs averaged into them (the stage's output)

    @classmethod
    def of(cls, meta: dict[str, Any]) -> CheckpointCard:
        if meta.get("kind") == "refiner":
            size = int(meta["patch_size"])
            return cls(
                kind="refiner", architecture="refiner", model=dict(meta["model"]), input_size=(size, size),
                sigma=float(meta["sigma"]), stride=1, output_kind="logits",
                landmark_names=tuple(meta["landmark_names"]), stage="refine", params=meta.get("params"),
                spacing_mm=float(meta["spacing_mm"]), jitter=meta.get("jitter"),
                coarse_checkpoint=meta.get("coarse_checkpoint"),
                coarse_val_mre_mm=meta.get("coarse_val_mre_mm"),
                **{k: meta.get(k) for k in TRAINING_RECORD},
            )  # fmt: skip
        model = meta["model"] if isinstance(meta["model"], dict) else {"name": str(meta["model"])}
        return cls(
            kind="coarse", architecture=model["name"], model=dict(model),
            input_size=tuple(int(v) for v in meta["input_size"]), sigma=float(meta["heatmap"]["sigma"]),
            stride=int(meta["heatmap"]["stride"]), output_kind=meta.get("output_kind", "logits"),
            landmark_names=tuple(meta["landmark_names"]), stage=meta.get("stage"), params=meta.get("params"),
            pruned=meta.get("pruned") or None, bypass_transformer=bool(meta.get("bypass_transformer")),
            **{k: meta.get(k) for k in TRAINING_RECORD},
        )  # fmt: skip

    def to_meta(self) -> dict[str, Any]:
        """The ``meta`` dict of a checkpoint file: what :meth:`of` reads back as this card."""
        if self.kind == "refiner":
            meta = {
                "kind": "refiner",
                "model": self.model,
                "patch_size": self.input_size[0],
                "sigma": self.sigma,
                "spacing_mm": self.spacing_mm,
                "jitter": self.jitter,
                "coarse_val_mre_mm": self.coarse_val_mre_mm,
                "coarse_checkpoint": self.coarse_checkpoint,
                "landmark_names": list(self.landmark_names),
                "params": self.params,
            }
        else:
            meta = {
                "model": self.model,
                "input_size": list(self.input_size),
                "heatmap": {"sigma": self.sigma, "stride": self.stride},
                "output_kind": self.output_kind,
                "landmark_names": list(self.landmark_names),
                "stage": self.stage,
                "bypass_transformer": self.bypass_transformer,
                "params": self.params,
                **({"pruned": self.pruned} if self.pruned else {}),
            }
        return meta | {k: getattr(self, k) for k in TRAINING_RECORD if getattr(self, k) is not None}

    @property
    def training_data(self) -> str:
        return training_data(self.params)

    def deployed(self) -> dict[str, Any]:
        """What a deployed model needs (stored in its ONNX file, read by :class:`ModelCard`)."""
        out = {
            "architecture": self.architecture,
            "input_size": list(self.input_size),
            "heatmap": {"sigma": self.sigma, "stride": self.stride},
            "landmark_names": list(self.landmark_names),
            "training_data": self.training_data,
            "stage": self.stage,
        }
        if self.kind == "refiner":
            out = {"kind": "refiner", **out, "spacing_mm": self.spacing_mm}
        return out


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
