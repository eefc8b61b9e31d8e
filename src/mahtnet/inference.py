"""Batched prediction: prepared images -> landmarks (prepared px) and confidences."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from mahtnet.codec import HeatmapCodec
from mahtnet.data.dataset import image_to_tensor
from mahtnet.losses import log_heatmaps


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def autocast(
    device: torch.device, enabled: bool, cpu_bf16: bool = False
) -> contextlib.AbstractContextManager:
    """fp16 autocast on CUDA when ``enabled``; bf16 autocast on CPU when ``cpu_bf16``; else a no-op."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if cpu_bf16 and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict(
    model: nn.Module,
    images: np.ndarray,
    codec: HeatmapCodec,
    output_kind: str,
    device: torch.device,
    batch_size: int = 8,
    amp: bool = False,
    decode: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``images (N, H, W)`` uint8 -> landmarks ``(N, K, 2)`` prepared px and confidence
    ``(N, K)`` (peak probability of each heatmap).

    ``decode(log_heatmaps (B, K, h, w), image_index (B,)) -> (B, ..., K, 2)`` replaces the
    codec's arg-max decoding of the landmarks (e.g. shape-consistent decoding; extra leading
    axes carry several decodings of the same forward pass, so the landmarks become
    ``(N, ..., K, 2)``); the confidence stays the arg-max peak."""
    was_training = model.training
    model.eval()
    coords, conf = [], []
    for start in range(0, len(images), batch_size):
        x = image_to_tensor(images[start : start + batch_size]).to(device)
        with autocast(device, amp):
            out = model(x).heatmaps
        logs = log_heatmaps(out, output_kind).cpu().numpy()
        c, peak = codec.decode(logs, is_log=True)
        if decode is not None:
            c = decode(logs, np.arange(start, start + len(logs)))
        coords.append(c)
        conf.append(np.exp(peak))
    model.train(was_training)
    return np.concatenate(coords), np.concatenate(conf)
