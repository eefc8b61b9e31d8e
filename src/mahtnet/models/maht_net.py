"""MAHT-Net: timm encoder -> transformer bottleneck -> attention-gated decoder -> heatmap head.

Every constructor argument after ``num_landmarks`` is a ``model.*`` key of ``params.yaml``
with the same name (see :func:`mahtnet.models.factory.build_model`).
"""

from __future__ import annotations

import torch
from torch import nn

from mahtnet.models.bottleneck import TransformerBottleneck
from mahtnet.models.decoder import AttentionDecoder
from mahtnet.models.encoder import Encoder
from mahtnet.models.head import HeatmapHead, LandmarkOutput
from mahtnet.models.hooks import forward_with_hooks


class MAHTNet(nn.Module):
    """Input ``(B, C, H, W)`` with ``H, W`` divisible by 32 -> :class:`LandmarkOutput` with
    heatmaps ``(B, K, H / output_stride, W / output_stride)``."""

    stride = 32  # input size must be a multiple of the encoder's coarsest stride
    # parameter-name prefixes of each component (per-component learning rates, gradient norms)
    components = {
        "encoder": ("encoder.",),
        "transformer": ("bottleneck.",),
        "decoder": ("decoder.",),
        "head": ("head.",),
    }

    def __init__(
        self,
        in_channels: int,
        num_landmarks: int,
        *,
        encoder: str,
        encoder_weights: str | None,
        encoder_frozen_stages: int,
        encoder_grad_checkpointing: bool,
        transformer_layers: int,
        transformer_dim: int,
        transformer_heads: int,
        transformer_mlp_ratio: float,
        attention_window: int,
        transformer_pos_size: int,
        decoder_channels: int,
        attention_gates: bool,
        decoder_cbam: bool,
        fpn: bool,
        output_stride: int,
        head_temperature: float,
    ):
        super().__init__()
        self.encoder = Encoder(
            encoder, in_channels, encoder_weights, encoder_frozen_stages, encoder_grad_checkpointing
        )
        self.bottleneck = TransformerBottleneck(
            self.encoder.channels[-1],
            layers=transformer_layers,
            dim=transformer_dim,
            heads=transformer_heads,
            mlp_ratio=transformer_mlp_ratio,
            window=attention_window,
            pos_size=transformer_pos_size,
        )
        self.decoder = AttentionDecoder(
            [*self.encoder.channels[:-1], self.bottleneck.out_channels],
            channels=decoder_channels,
            output_stride=output_stride,
            attention_gates=attention_gates,
            cbam=decoder_cbam,
            fpn=fpn,
        )
        self.head = HeatmapHead(self.decoder.out_channels, num_landmarks, output_stride, head_temperature)
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> LandmarkOutput:
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"MAHT-Net input size {h}x{w} is not divisible by {self.stride}")
        features = self.encoder(x)  # strides 4, 8, 16, 32
        features[-1] = self.bottleneck(features[-1])
        return self.head(self.decoder(features))


@torch.no_grad()
def attention_maps(model: MAHTNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Attention maps of one forward pass over ``x (B, C, H, W)``, for visualisation:

    - ``"bottleneck.<i>"``: mean attention each stride-32 token receives in transformer block
      ``i`` (over heads and queries), ``(B, H/32, W/32)``;
    - ``"gate.<s>"``: the decoder's attention-gate map on the stride-``s`` skip, ``(B, H/s, W/s)``.

    Absent parts (no transformer, no gates) give no entries. The model is run in eval mode.
    """
    maps: dict[str, torch.Tensor] = {}
    hooks = []
    for i, block in enumerate(model.bottleneck.blocks):

        def keep_attention(module, args, _out, name=f"bottleneck.{i}"):
            tokens, (h, w) = args
            maps[name] = module.attention_received(tokens, (h, w)).reshape(-1, h, w)

        hooks.append((block.attn, keep_attention))
    for gate, stride in zip(model.decoder.gates, (16, 8, 4), strict=False):

        def keep_gate(_module, _args, out, name=f"gate.{stride}"):
            maps[name] = out[:, 0]

        hooks.append((gate.psi, keep_gate))
    forward_with_hooks(model, x, hooks)
    return maps


@torch.no_grad()
def landmark_attention(model: MAHTNet, x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Where the last transformer block looks from each landmark: for ``points (B, P, 2)``
    (x, y in input px), the attention row of the stride-32 token under each point, mean over
    heads, as maps ``(B, P, H/32, W/32)``. Global attention only; the model is run in eval mode."""
    rows: dict[str, torch.Tensor] = {}
    block = model.bottleneck.blocks[-1]

    def keep(module, args, _out):
        tokens, (h, w) = args
        rows["attn"], rows["hw"] = module.attention_matrix(tokens, (h, w)), (h, w)

    forward_with_hooks(model, x, [(block.attn, keep)])
    (h, w), attn = rows["hw"], rows["attn"]  # (B, N, N)
    col = (points[..., 0] / model.stride).long().clamp(0, w - 1)
    row = (points[..., 1] / model.stride).long().clamp(0, h - 1)
    index = (row * w + col)[..., None].expand(-1, -1, attn.shape[-1])  # (B, P, N)
    return torch.gather(attn, 1, index).reshape(*points.shape[:2], h, w)
