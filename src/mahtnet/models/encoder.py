"""Multi-scale CNN encoder: a timm backbone with ``features_only=True``.

The encoder returns four feature maps at strides 4, 8, 16 and 32; their widths come from
timm's ``feature_info`` (never hard-coded), so the decoder adapts to any backbone. timm
never downloads anything here: weights come only from a local file (``weights``), a
timm-keyed state dict such as the one ``scripts/convert_efficientnet_lite.py`` writes.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from mahtnet.io import load_torch

# tf_efficientnet_lite0/1/2: the same tensors as efficientnet_lite0/1/2 with TensorFlow's "same" padding
# and BatchNorm eps, the architecture the ImageNet weights of scripts/convert_efficientnet_lite.py (the DVC
# stage weights) were trained in
ENCODERS = (
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_lite0",
    "resnet50",
    "tf_efficientnet_lite0",
    "tf_efficientnet_lite1",
    "tf_efficientnet_lite2",
)
STRIDES = (4, 8, 16, 32)


class EncoderWeightsError(RuntimeError):
    """A weights file that does not fit the encoder; the message names the file."""


class Encoder(nn.Module):
    """timm backbone -> features ``[(B, C_i, H/s, W/s) for s in 4, 8, 16, 32]``.

    Args:
        name: one of :data:`ENCODERS`.
        in_channels: image channels (1 for X-rays; RGB weights are summed over channels).
        weights: ``None`` (random init) or a local timm-keyed state dict file.
        frozen_stages: 0 trains everything; ``n`` freezes the stem and the first ``n`` of the
            four feature stages (4 = the whole encoder). Frozen BatchNorm stays in eval mode.
        grad_checkpointing: recompute stage activations in the backward pass (less memory).
    """

    def __init__(
        self,
        name: str,
        in_channels: int,
        weights: str | None,
        frozen_stages: int,
        grad_checkpointing: bool,
    ):
        super().__init__()
        if name not in ENCODERS:
            raise KeyError(f"unknown model.encoder {name!r}; valid: {', '.join(ENCODERS)}")
        if not 0 <= frozen_stages <= len(STRIDES):
            raise ValueError(f"encoder frozen_stages must be in 0..{len(STRIDES)}, got {frozen_stages}")
        self.name = name
        self.backbone = timm.create_model(
            name, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4), in_chans=in_channels
        )
        reductions = tuple(self.backbone.feature_info.reduction())
        if reductions != STRIDES:
            raise ValueError(f"encoder {name} gives feature strides {reductions}, expected {STRIDES}")
        self.channels: list[int] = list(self.backbone.feature_info.channels())
        self.backbone.set_grad_checkpointing(grad_checkpointing)
        if weights is not None:
            load_encoder_weights(self.backbone, weights, name)
        self.frozen_stages = frozen_stages
        self._frozen: list[nn.Module] = []
        if frozen_stages:
            self._freeze(self.backbone.feature_info.module_name()[frozen_stages - 1])

    def _freeze(self, last_module: str) -> None:
        """Freeze every parameter up to and including module ``last_module`` (timm registers
        modules in forward order: stem, then the stages)."""
        names = [n for n, _ in self.backbone.named_parameters()]
        last = max(i for i, n in enumerate(names) if n.startswith(last_module + "."))
        frozen = set(names[: last + 1])
        for n, p in self.backbone.named_parameters():
            p.requires_grad_(n not in frozen)
        self._frozen = [
            m
            for m in self.backbone.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and all(not p.requires_grad for p in m.parameters(recurse=False))
        ]

    def train(self, mode: bool = True) -> Encoder:
        super().train(mode)
        for m in self._frozen:  # frozen BatchNorm keeps its running statistics
            m.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone(x)


def load_encoder_weights(backbone: nn.Module, path: str | Path, name: str) -> None:
    """Load a timm-keyed state dict file into a ``features_only`` backbone.

    Keys the backbone does not use (classifier, last conv) are ignored; every backbone
    tensor must be present with the right shape, except that 3-channel weights of the first
    convolution are adapted to the backbone's input channels (summed for 1 channel).
    """
    path = Path(path)
    state = load_torch(path, "encoder weights file (model.encoder_weights)", EncoderWeightsError)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise EncoderWeightsError(f"{path} is not a state dict")
    own = backbone.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise EncoderWeightsError(
            f"{path} does not fit encoder {name}: {len(missing)} of {len(own)} tensors missing "
            f"(e.g. {missing[0]!r}); convert it to timm keys first (scripts/convert_efficientnet_lite.py)"
        )
    loaded = {}
    for key, target in own.items():
        value = state[key]
        if value.ndim == 4 and target.ndim == 4 and value.shape[1] != target.shape[1]:
            value = adapt_input_conv(target.shape[1], value)
        if value.shape != target.shape:
            raise EncoderWeightsError(
                f"{path} does not fit encoder {name}: {key!r} is {tuple(value.shape)}, "
                f"expected {tuple(target.shape)}"
            )
        loaded[key] = value
    backbone.load_state_dict(loaded)


def remap_in_order(source: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], what: str) -> dict:
    """Re-key ``source`` onto ``reference``'s keys by position: the two state dicts must have the
    same number of tensors and, pair by pair, the same shape and the same kind of tensor (the last
    key component: ``weight``, ``bias``, ``running_mean`` ...). ``what`` names the source in errors."""
    if len(source) != len(reference):
        raise EncoderWeightsError(f"{what} has {len(source)} tensors, expected {len(reference)}")
    out = {}
    for i, ((src_key, value), (key, target)) in enumerate(
        zip(source.items(), reference.items(), strict=True)
    ):
        if tuple(value.shape) != tuple(target.shape) or src_key.rsplit(".", 1)[-1] != key.rsplit(".", 1)[-1]:
            raise EncoderWeightsError(
                f"{what}: tensor {i} {src_key!r} {tuple(value.shape)} does not match "
                f"{key!r} {tuple(target.shape)}"
            )
        out[key] = value.clone()
    return out
