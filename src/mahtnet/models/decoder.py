"""Attention-gated decoder: multi-scale features (strides 4, 8, 16, 32) -> one feature map at
``output_stride`` (1 or 2).

1. 1x1 lateral (adaptation) convolutions bring every level to ``channels``.
2. Top-down from stride 32 to 4: the coarser map is upsampled (bilinear x2), the skip is
   optionally weighted by an attention gate driven by it (``attention_gates``), and the two
   are fused by addition (FPN lateral fusion, ``fpn``) or concatenation (U-Net style), then a
   residual block and optional CBAM channel + spatial attention (``cbam``).
3. Progressive residual upsampling from stride 4 to ``output_stride``, halving the width at
   each x2 step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mahtnet.models.layers import CBAM, AttentionGate, ConvBNReLU, ResidualBlock

OUTPUT_STRIDES = (1, 2)


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class AttentionDecoder(nn.Module):
    """``[(B, C_i, H/s, W/s) for s in 4, 8, 16, 32]`` -> ``(B, out_channels, H/o, W/o)``.

    Args:
        in_channels: widths of the four input levels (from ``feature_info`` and the bottleneck).
        channels: common decoder width at strides 4-32.
        output_stride: 1 or 2.
        attention_gates, cbam, fpn: the switchable parts (see the module docstring).
    """

    def __init__(
        self,
        in_channels: list[int],
        channels: int,
        output_stride: int,
        attention_gates: bool,
        cbam: bool,
        fpn: bool,
    ):
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"decoder output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        if len(in_channels) != 4:
            raise ValueError(f"decoder expects 4 feature levels, got {len(in_channels)}")
        self.fpn = fpn
        self.lateral = nn.ModuleList([ConvBNReLU(c, channels, kernel_size=1) for c in in_channels])
        levels = len(in_channels) - 1  # fusion steps: 32->16, 16->8, 8->4
        self.gates = nn.ModuleList(
            [AttentionGate(channels, channels, max(8, channels // 2)) for _ in range(levels)]
            if attention_gates
            else []
        )
        fused = channels if fpn else 2 * channels
        self.fuse = nn.ModuleList([ResidualBlock(fused, channels) for _ in range(levels)])
        self.attention = nn.ModuleList([CBAM(channels) for _ in range(levels)] if cbam else [])
        widths = [channels]
        for _ in range({1: 2, 2: 1}[output_stride]):
            widths.append(max(8, widths[-1] // 2))
        self.upsample = nn.ModuleList([ResidualBlock(a, b) for a, b in zip(widths, widths[1:], strict=False)])
        self.out_channels = widths[-1]
        self.output_stride = output_stride

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        lat = [conv(f) for conv, f in zip(self.lateral, features, strict=True)]
        x = lat[-1]  # stride 32
        for i, skip in enumerate(reversed(lat[:-1])):  # strides 16, 8, 4
            x = _up2(x)
            if self.gates:
                skip = self.gates[i](skip, x)
            x = self.fuse[i](x + skip if self.fpn else torch.cat([x, skip], dim=1))
            if self.attention:
                x = self.attention[i](x)
        for block in self.upsample:  # stride 4 -> 2 (-> 1)
            x = block(_up2(x))
        return x
