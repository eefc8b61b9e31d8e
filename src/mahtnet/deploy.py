"""A trained network as a plain tensor-in, tensor-out module: what ONNX export and MLflow
model logging save.

``HeatmapNet(model, output_kind)`` maps images ``(B, 1, H, W)`` float32 in [0, 1] (the
letterboxed network input, :func:`mahtnet.data.dataset.image_to_tensor`) to log-heatmaps
``(B, K, h, w)``; :meth:`mahtnet.codec.HeatmapCodec.decode` (``is_log=True``) reads the
landmarks from them, in NumPy, so a deployed model needs no PyTorch.
"""

from __future__ import annotations

import torch
from torch import nn

from mahtnet.losses import log_heatmaps


class HeatmapNet(nn.Module):
    """``model`` with its output read as log-heatmaps (the only output: ONNX and MLflow need
    a plain tensor)."""

    def __init__(self, model: nn.Module, output_kind: str):
        super().__init__()
        self.model = model
        self.output_kind = output_kind

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return log_heatmaps(self.model(images).heatmaps, self.output_kind)
