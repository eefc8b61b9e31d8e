"""A trained network as a plain tensor-in, tensor-out module: what ONNX export and MLflow
model logging save, and what the PyTorch backends of :mod:`mahtnet.decoding.backends` run.

``HeatmapNet(model, output_kind)`` maps images ``(B, 1, H, W)`` float32 in [0, 1] (the
letterboxed network input, :func:`mahtnet.data.dataset.image_to_tensor`) to log-heatmaps
``(B, K, h, w)``; :meth:`mahtnet.codec.HeatmapCodec.decode` (``is_log=True``) reads the
landmarks from them, in NumPy, so a deployed model needs no PyTorch.
"""

from __future__ import annotations

import torch
from torch import nn

from mahtnet.models.head import log_heatmaps


class HeatmapNet(nn.Module):
    """``model`` with its output read as log-heatmaps (the only output: ONNX and MLflow need
    a plain tensor)."""

    def __init__(self, model: nn.Module, output_kind: str):
        super().__init__()
        self.model = model
        self.output_kind = output_kind

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return log_heatmaps(self.model(images).heatmaps, self.output_kind)


class RefinerNet(nn.Module):
    """A refiner read as one landmark's log-probability map: patches ``(B, 1, P, P)`` float32
    in [0, 1] and the landmark of each patch ``(B,)`` int64 -> the log-softmax over the patch
    of that landmark's heatmap logits ``(B, P, P)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, patches: torch.Tensor, landmark: torch.Tensor) -> torch.Tensor:
        out = self.model(patches)
        logits = (out.heatmaps if hasattr(out, "heatmaps") else out).float()
        b, _, h, w = logits.shape
        index = landmark.long().reshape(b, 1, 1, 1).expand(b, 1, h, w)
        chosen = logits.gather(1, index).reshape(b, h * w)
        return torch.log_softmax(chosen, dim=-1).reshape(b, h, w)
