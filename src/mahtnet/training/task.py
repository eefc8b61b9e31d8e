"""What a training run trains: :class:`TrainTask` (the loop in :mod:`mahtnet.training.loop`
runs it; :mod:`mahtnet.training.autobatch` sizes its batches)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from mahtnet.models.card import CheckpointCard


@dataclasses.dataclass
class TrainTask:
    """What a :class:`Trainer` trains: a model, its training data, loss and validation.

    ``loss(output, batch)`` gives ``(total, {term: value})`` for a model output on a batch of
    ``train_ds`` (``batch["image"]`` is the network input); ``validate(model)`` gives
    ``{"val_loss", "val_mre_mm", "val_sdr_2mm"}``. ``card`` is every checkpoint's metadata (the
    trainer adds the epoch of the weights);
    ``fingerprint`` identifies the run for resuming."""

    name: str
    model: nn.Module
    loss_fn: nn.Module  # may hold learned parameters (uncertainty weighting)
    groups: list[dict]  # optimizer parameter groups, one per trainable component
    frozen_bn: list[nn.Module]  # BatchNorm layers kept in eval mode
    train_ds: Dataset
    loss: Callable[[Any, dict], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    validate: Callable[[nn.Module], dict[str, float]]
    probe: torch.Tensor  # a fixed validation batch for activation statistics
    card: CheckpointCard
    fingerprint: str
