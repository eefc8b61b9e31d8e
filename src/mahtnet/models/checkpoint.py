"""Checkpoints: written atomically, read with clear errors, self-describing.

A model checkpoint holds the weights and everything needed to use them without
``params.yaml``: the model name and block, the input size, the codec and how to read the
output. A training state (``save_train_state``) holds what an exact resume needs.
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
from mahtnet.models.card import CheckpointCard
from mahtnet.models.factory import build_model

FORMAT = "mahtnet-checkpoint"
STATE_FORMAT = "mahtnet-train-state"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


def save_checkpoint(path: str | Path, model: nn.Module, card: CheckpointCard) -> Path:
    """``model``'s weights with ``card`` as the checkpoint's metadata (``card.to_meta()``)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "model_state": state, "meta": card.to_meta()}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    return _load(path, FORMAT, "checkpoint", ("model_state", "meta"))


def _load(path: str | Path, fmt: str, what: str, keys: tuple[str, ...]) -> dict[str, Any]:
    path = Path(path)
    payload = load_torch(path, what, CheckpointError)
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise CheckpointError(f"{path} is not a MAHT-Net {what}")
    for key in keys:
        if key not in payload:
            raise CheckpointError(f"{what} {path} lacks '{key}'")
    return payload


def save_train_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Everything an exact resume needs (model, optimizer, scheduler, scaler, RNG, early
    stopping, history), written atomically: a kill leaves the previous complete state."""
    return atomic_write(
        path, lambda tmp: torch.save({"format": STATE_FORMAT, "version": VERSION, **state}, tmp)
    )


def load_train_state(path: str | Path) -> dict[str, Any]:
    """A training state; a damaged file raises :class:`CheckpointError` naming it (never a
    silent fresh start)."""
    return _load(path, STATE_FORMAT, "training state", ("fingerprint", "epoch", "model_state"))


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors (weights and BatchNorm statistics) of
    same-architecture state dicts; integer buffers (e.g. ``num_batches_tracked``) from the last."""
    if not states:
        raise ValueError("no checkpoints to average")
    out = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            out[key] = torch.stack([s[key].float() for s in states]).mean(dim=0).to(last.dtype)
        else:
            out[key] = last.clone()
    return out


def model_from_checkpoint(payload: dict[str, Any]) -> tuple[nn.Module, HeatmapCodec, str]:
    """Rebuild ``(model, codec, output_kind)`` from a loaded checkpoint.

    The encoder's initial weights file is not read (the checkpoint holds all weights), a
    channel-pruned network (:attr:`CheckpointCard.pruned`) is narrowed to its weights' shapes, and U-Net
    checkpoints written before MAHT-Net existed (without its ``model`` keys) still load.
    """
    card = CheckpointCard.of(payload["meta"])
    block = dict(card.model)
    name = block.pop("name")
    missing = [f.name for f in dataclasses.fields(ModelParams) if f.name not in block]
    if missing and name != "unet":
        raise CheckpointError(f"checkpoint model block lacks keys {missing}")
    block = {k: v for k, v in block.items() if k in {f.name for f in dataclasses.fields(ModelParams)}}
    model_params = ModelParams(**(dict.fromkeys(missing) | block | {"encoder_weights": None}))
    model = build_model(name, model_params, num_landmarks=len(card.landmark_names))
    if card.pruned:  # narrower layers than the model block builds (mahtnet.training.prune)
        from mahtnet.models.pruned import shrink_to

        shrink_to(model, payload["model_state"])
    else:
        model.load_state_dict(payload["model_state"])
    if card.bypass_transformer:
        model.bottleneck.bypass = True
    model.eval()
    codec = HeatmapCodec(card.input_size, card.sigma, model.output_stride)
    return model, codec, card.output_kind


def read_card(path: str | Path) -> CheckpointCard:
    """The typed metadata of a checkpoint file."""
    return CheckpointCard.of(load_checkpoint(path)["meta"])
