"""Build a model from the ``model`` block of ``params.yaml``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from mahtnet.config import ModelParams
from mahtnet.landmarks import NUM_LANDMARKS
from mahtnet.models.unet import UNet


def _unet(p: ModelParams, in_channels: int, num_landmarks: int) -> nn.Module:
    return UNet(in_channels, num_landmarks, channels=p.unet_channels, depth=p.unet_depth)


MODELS: dict[str, Callable[[ModelParams, int, int], nn.Module]] = {"unet": _unet}


def build_model(p: ModelParams, in_channels: int = 1, num_landmarks: int = NUM_LANDMARKS) -> nn.Module:
    """The model named ``p.name``; an unknown name raises a ``KeyError`` listing the valid ones."""
    if p.name not in MODELS:
        raise KeyError(f"unknown model.name {p.name!r}; valid: {', '.join(sorted(MODELS))}")
    return MODELS[p.name](p, in_channels, num_landmarks)
