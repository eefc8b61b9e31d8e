"""Build a model from the ``model`` block of ``params.yaml``."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from mahtnet.config import ModelParams
from mahtnet.landmarks import NUM_LANDMARKS
from mahtnet.models.maht_net import MAHTNet
from mahtnet.models.unet import UNet

# MAHTNet's keyword-only arguments: each is the model.* key of the same name
MAHT_NET_KEYS = tuple(
    n for n, a in inspect.signature(MAHTNet).parameters.items() if a.kind is inspect.Parameter.KEYWORD_ONLY
)


def _unet(p: ModelParams, in_channels: int, num_landmarks: int) -> nn.Module:
    return UNet(in_channels, num_landmarks, channels=p.unet_channels, depth=p.unet_depth)


def _maht_net(p: ModelParams, in_channels: int, num_landmarks: int) -> nn.Module:
    return MAHTNet(in_channels, num_landmarks, **{k: getattr(p, k) for k in MAHT_NET_KEYS})


MODELS: dict[str, Callable[[ModelParams, int, int], nn.Module]] = {"unet": _unet, "maht_net": _maht_net}


def build_model(
    name: str, p: ModelParams, in_channels: int = 1, num_landmarks: int = NUM_LANDMARKS
) -> nn.Module:
    """The model ``name`` ("unet" or "maht_net") with the architecture keys of ``p``; an unknown
    name raises a ``KeyError`` listing the valid ones.

    Every model returns a :class:`mahtnet.models.head.LandmarkOutput`, has an
    ``output_stride`` (input pixels per heatmap pixel) and ``components`` (parameter-name
    prefixes of its encoder / transformer / decoder / head)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
    return MODELS[name](p, in_channels, num_landmarks)


def build_refiner(num_landmarks: int, channels: int, depth: int) -> UNet:
    """The refinement network: a :class:`UNet` on one-channel patches with one heatmap
    (logits) per landmark; patch sizes must be divisible by ``2**depth``."""
    return UNet(1, num_landmarks, channels, depth)
