"""Baseline U-Net (Ronneberger et al., 2015) for heatmap regression."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mahtnet.models.head import LandmarkOutput, landmark_output
from mahtnet.models.layers import DoubleConv


class UNet(nn.Module):
    """``depth`` down blocks, a bottleneck, ``depth`` up blocks with skip connections and a
    1x1 convolution to one heatmap per landmark at the input resolution.

    Input ``(B, C, H, W)`` with ``H, W`` divisible by ``2**depth``; output a
    :class:`LandmarkOutput` with heatmaps ``(B, K, H, W)`` (logits or heatmaps, depending on
    the loss) and their soft-argmax coordinates at temperature 1.
    """

    output_stride = 1
    # parameter-name prefixes of each component (as MAHTNet.components; no transformer)
    components = {"encoder": ("down.",), "decoder": ("bottleneck.", "up.", "up_blocks."), "head": ("head.",)}

    def __init__(self, in_channels: int, num_landmarks: int, channels: int, depth: int):
        super().__init__()
        widths = [channels * 2**i for i in range(depth + 1)]  # e.g. 16, 32, 64, 128, 256
        self.stride = 2**depth
        self.down = nn.ModuleList(
            [DoubleConv(in_channels, widths[0])]
            + [DoubleConv(widths[i - 1], widths[i]) for i in range(1, depth)]
        )
        self.bottleneck = DoubleConv(widths[depth - 1], widths[depth])
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))]
        )
        self.up_blocks = nn.ModuleList([DoubleConv(2 * widths[i], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], num_landmarks, 1)

    def forward(self, x: torch.Tensor) -> LandmarkOutput:
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"input size {h}x{w} is not divisible by {self.stride}")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.up, self.up_blocks, reversed(skips), strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
        return landmark_output(self.head(x), stride=1, temperature=1.0)
