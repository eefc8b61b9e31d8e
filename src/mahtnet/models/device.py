"""Where and how a network runs: the device, and mixed precision (training and the PyTorch
backends of :mod:`mahtnet.decoding.backends` share them)."""

from __future__ import annotations

import contextlib

import torch


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
