"""Landmark head: one heatmap (logits) per landmark, differentiable soft-argmax coordinates
and a per-landmark confidence, returned together as a :class:`LandmarkOutput`.

Coordinates use the project convention of :class:`mahtnet.codec.HeatmapCodec`: ``(x, y)``
in network-input pixels, heatmap pixel ``j`` centred on input position
``(j + 0.5) * stride - 0.5``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class LandmarkOutput(NamedTuple):
    heatmaps: torch.Tensor  # (B, K, h, w) logits (the spatial softmax is the heatmap distribution)
    coords: torch.Tensor  # (B, K, 2) soft-argmax (x, y) in input pixels
    confidence: torch.Tensor  # (B, K) peak probability of the spatial softmax


def soft_argmax(logits: torch.Tensor, stride: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(B, K, h, w)`` -> expected position ``(B, K, 2)`` (input px) under
    ``softmax(logits / temperature)`` over each map, and that distribution's peak ``(B, K)``."""
    b, k, h, w = logits.shape
    prob = torch.softmax(logits.float().reshape(b, k, -1) / temperature, dim=-1).reshape(b, k, h, w)
    xs = (torch.arange(w, device=logits.device, dtype=prob.dtype) + 0.5) * stride - 0.5
    ys = (torch.arange(h, device=logits.device, dtype=prob.dtype) + 0.5) * stride - 0.5
    x = (prob.sum(dim=2) * xs).sum(dim=-1)  # marginal over rows (B, K, w) . (w,)
    y = (prob.sum(dim=3) * ys).sum(dim=-1)  # marginal over columns (B, K, h) . (h,)
    return torch.stack([x, y], dim=-1), prob.flatten(2).amax(dim=-1)


def landmark_output(logits: torch.Tensor, stride: int, temperature: float) -> LandmarkOutput:
    coords, confidence = soft_argmax(logits, stride, temperature)
    return LandmarkOutput(logits, coords, confidence)


class HeatmapHead(nn.Module):
    """``(B, C, h, w)`` features -> :class:`LandmarkOutput` with ``K`` heatmaps at ``stride``.

    ``temperature`` is configured, not learned: the heatmap loss (spatial-softmax KL) does
    not involve it, so a learnable one would get no gradient.
    """

    def __init__(self, in_channels: int, num_landmarks: int, stride: int, temperature: float):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"head temperature must be positive, got {temperature}")
        self.conv = nn.Conv2d(in_channels, num_landmarks, 1)
        self.stride = stride
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> LandmarkOutput:
        return landmark_output(self.conv(x), self.stride, self.temperature)


OUTPUT_KINDS = ("logits", "heatmap")  # what a model's ``heatmaps`` hold (checkpoint meta ``output_kind``)


def log_heatmaps(output: torch.Tensor, kind: str) -> torch.Tensor:
    """Network output -> log-heatmaps ``(B, K, h, w)`` for :meth:`HeatmapCodec.decode`: the
    head's ``kind`` of output (:data:`OUTPUT_KINDS`; ``logits`` under a spatial log-softmax,
    ``heatmap`` a log). The one conversion: training, the readout modules and export use it."""
    if kind == "logits":
        b, k, h, w = output.shape
        return F.log_softmax(output.float().reshape(b, k, -1), dim=-1).reshape(b, k, h, w)
    if kind == "heatmap":
        return output.float().clamp_min(1e-10).log()
    raise KeyError(f"unknown output kind {kind!r}; valid: logits, heatmap")
