"""Checkpoints: written atomically, read with clear errors, self-describing.

A checkpoint holds the model weights and everything needed to use them without
``params.yaml``: the model block, the input size, the codec and how to read the output.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mahtnet.codec import HeatmapCodec
from mahtnet.config import ModelParams
from mahtnet.io import atomic_write, load_torch
from mahtnet.models.factory import build_model

FORMAT = "mahtnet-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "model_state": state, "meta": meta}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    payload = load_torch(path, "checkpoint", CheckpointError)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a MAHT-Net checkpoint")
    for key in ("model_state", "meta"):
        if key not in payload:
            raise CheckpointError(f"checkpoint {path} lacks '{key}'")
    return payload


def model_from_checkpoint(payload: dict[str, Any]) -> tuple[nn.Module, HeatmapCodec, str]:
    """Rebuild ``(model, codec, output_kind)`` from a loaded checkpoint.

    The encoder's initial weights file is not read (the checkpoint holds all weights), and
    U-Net checkpoints written before MAHT-Net existed (without its ``model`` keys) still load.
    """
    meta = payload["meta"]
    missing = [f.name for f in dataclasses.fields(ModelParams) if f.name not in meta["model"]]
    if missing and meta["model"].get("name") != "unet":
        raise CheckpointError(f"checkpoint model block lacks keys {missing}")
    model_params = ModelParams(**(dict.fromkeys(missing) | meta["model"] | {"encoder_weights": None}))
    model = build_model(model_params, num_landmarks=len(meta["landmark_names"]))
    model.load_state_dict(payload["model_state"])
    model.eval()
    codec = HeatmapCodec(tuple(meta["input_size"]), meta["heatmap"]["sigma"], meta["heatmap"]["stride"])
    return model, codec, meta["output_kind"]
