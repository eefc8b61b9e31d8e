"""Small building blocks shared by the models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """(conv 3x3 - BN - ReLU) x 2, the U-Net block."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(ConvBNReLU(in_channels, out_channels), ConvBNReLU(out_channels, out_channels))


class ResidualBlock(nn.Module):
    """(conv 3x3 - BN - ReLU - conv 3x3 - BN) + shortcut (1x1 conv when the width changes), ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            ConvBNReLU(in_channels, out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class CBAM(nn.Module):
    """Channel then spatial attention (Woo et al., "CBAM", ECCV 2018): an SE-style gate from
    average- and max-pooled channel descriptors, then a 7x7 gate from the channel-wise mean
    and max maps."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(4, channels // reduction)
        self.channel_mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1)
        )
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.channel_mlp(F.adaptive_avg_pool2d(x, 1))
        mx = self.channel_mlp(F.adaptive_max_pool2d(x, 1))
        x = x * torch.sigmoid(avg + mx)  # (B, C, H, W) * (B, C, 1, 1)
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)
        return x * torch.sigmoid(self.spatial(pooled))


class AttentionGate(nn.Module):
    """Additive attention gate on a skip connection (Oktay et al., "Attention U-Net", 2018):
    ``skip * sigmoid(psi(relu(W_x skip + W_g gate)))`` with the gate at the skip's size.
    ``psi`` ends in the sigmoid, so a hook on it reads the gate map ``(B, 1, H, W)``."""

    def __init__(self, channels: int, gate_channels: int, hidden: int):
        super().__init__()
        self.w_x = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden))
        self.w_g = nn.Sequential(nn.Conv2d(gate_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden))
        self.psi = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1), nn.Sigmoid())

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return skip * self.psi(self.w_x(skip) + self.w_g(gate))
