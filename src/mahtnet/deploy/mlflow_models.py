"""Trained networks as MLflow models: one registered model per architecture in the tracking
store, each training stage (``tracking.log_models``) and each ONNX export a new version.

Registered names: ``unet`` (``train_baseline``), ``maht_net`` (``train_stage1``-``3``; the
``stage`` tag tells the versions apart), ``refiner_unet`` / ``refiner_maht_net``
(``train_refine@baseline`` / ``@maht_net``: a refiner is trained on its coarse model's errors,
so the refiners of different coarse architectures are different models, not versions of one),
``maht_net_pruned`` (``train_prune@<pct>``: the ``pruned_sparsity`` tag tells them apart).

What is logged is :class:`~mahtnet.models.readout.HeatmapNet`: images ``(B, 1, H, W)`` float32 in
[0, 1] -> log-heatmaps ``(B, K, h, w)``; for a refiner the images are patches ``(B, 1, P, P)``
centred on a coarse landmark (fine resolution, ``refine.spacing_mm``), of whose K channels
the patch's own landmark is read. Every version carries (as tags and as ``MLmodel``
metadata) its stage, landmark names, input size, heatmap sigma / stride, output kind, training
data and the checkpoint's path and sha256.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from mahtnet.decoding import TorchRefiner
from mahtnet.models.card import CheckpointCard, sha256
from mahtnet.models.checkpoint import load_checkpoint, model_from_checkpoint, read_card
from mahtnet.models.readout import HeatmapNet
from mahtnet.tracking import Run, log_onnx_model, log_torch_model

OUTPUT = "log-heatmaps (B, K, h, w): HeatmapCodec.decode(is_log=True) reads the landmarks"


@dataclasses.dataclass
class Deployable:
    """A checkpoint's network as logged: registered name, tensor-in tensor-out network, input
    ``(H, W)``, tags (strings) and metadata."""

    name: str
    net: HeatmapNet
    input_size: tuple[int, int]
    tags: dict[str, str]
    metadata: dict[str, Any]

    def example(self, batch: int) -> np.ndarray:
        """Zero images ``(batch, 1, H, W)`` float32 (small on disk)."""
        return np.zeros((batch, 1, *self.input_size), dtype=np.float32)


def _heatmap_model(payload: dict) -> tuple[str, HeatmapNet, tuple[int, int], dict[str, Any]]:
    model, codec, output_kind = model_from_checkpoint(payload)
    card = CheckpointCard.of(payload["meta"])
    info = {
        "stage": card.stage or "unknown",
        "input": "images (B, 1, H, W) float32 in [0, 1], letterboxed to the input size",
        "heatmap_sigma": codec.sigma,
        "heatmap_stride": codec.stride,
        "output_kind": output_kind,
    }
    name = card.architecture
    if card.pruned:
        name, info["pruned_sparsity"] = f"{name}_pruned", card.pruned["sparsity"]
    return name, HeatmapNet(model, output_kind), codec.input_size, info


def _refiner(path: Path, coarse: str | Path | None) -> tuple[str, HeatmapNet, tuple[int, int], dict]:
    model, card = TorchRefiner(path, "cpu").net.model, read_card(path)
    coarse = Path(coarse or card.coarse_checkpoint)
    coarse_name = read_card(coarse).architecture
    info = {
        "stage": "refine",
        "input": f"patches (B, 1, P, P) float32 in [0, 1], {card.spacing_mm} mm/px, on a coarse point",
        "heatmap_sigma": card.sigma,
        "heatmap_stride": 1,
        "output_kind": "logits",
        "coarse_checkpoint": str(coarse),
        "coarse_architecture": coarse_name,
        "spacing_mm": card.spacing_mm,
    }
    return f"refiner_{coarse_name}", HeatmapNet(model, "logits"), card.input_size, info


def deployable(checkpoint: str | Path, coarse: str | Path | None = None) -> Deployable:
    """The network of a heatmap-model or refiner checkpoint (``coarse``: a refiner's coarse
    checkpoint; default: the path stored in it) with its registered name, tags and metadata."""
    path = Path(checkpoint)
    payload = load_checkpoint(path)
    card = CheckpointCard.of(payload["meta"])
    if card.kind == "refiner":
        name, net, size, info = _refiner(path, coarse)
    else:
        name, net, size, info = _heatmap_model(payload)
    metadata = {
        "architecture": name,
        **info,
        "input_size": list(size),
        "output": OUTPUT,
        "landmark_names": list(card.landmark_names),
        "training_data": card.training_data,
        "checkpoint": str(path),
        "checkpoint_sha256": sha256(path),
    }
    tags = {k: ",".join(v) if k == "landmark_names" else str(v) for k, v in metadata.items()}
    tags["input_size"] = "x".join(map(str, size))
    return Deployable(name, net.eval(), size, tags, metadata)


def log_stage_model(
    run: Run, checkpoint: str | Path, coarse: str | Path | None = None, tags: dict[str, Any] | None = None
) -> tuple[str, int]:
    """Log a training stage's checkpoint as a PyTorch model (``torch.export``) and register it;
    ``tags``: extra version tags (e.g. validation metrics). Returns ``(name, version)``."""
    d = deployable(checkpoint, coarse)
    return d.name, log_torch_model(run, d.net, d.example(2), d.name, {**d.tags, **(tags or {})}, d.metadata)


def log_onnx_export(
    run: Run,
    checkpoint: str | Path,
    onnx_path: str | Path,
    coarse: str | Path | None = None,
    tags: dict[str, Any] | None = None,
) -> tuple[str, int]:
    """Log ``onnx_path``, the ONNX export of ``checkpoint``, as an ONNX model and register it
    as a new version of the checkpoint's registered model. Returns ``(name, version)``."""
    d = deployable(checkpoint, coarse)
    merged = {**d.tags, **(tags or {})}
    return d.name, log_onnx_model(run, onnx_path, d.example(1), d.name, merged, d.metadata)
