"""Heatmap losses.

Each loss takes the network's heatmaps ``(B, K, h, w)`` (``LandmarkOutput.heatmaps``),
Gaussian targets with unit peaks ``(B, K, h, w)`` and a visibility mask ``(B, K)``, and
averages over visible landmarks.
``LOSSES[name].output`` says how to read the network output at decode time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F


def _masked_mean(per_landmark: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    mask = visible.to(per_landmark.dtype)
    return (per_landmark * mask).sum() / mask.sum().clamp_min(1.0)


def softmax_ce(output: torch.Tensor, target: torch.Tensor, visible: torch.Tensor, **_) -> torch.Tensor:
    """KL divergence between the target Gaussian (normalised to a distribution) and the
    spatial softmax of the logits. Zero at the optimum; it does not stall on near-zero
    outputs the way MSE on unit-peak Gaussians does."""
    b, k = output.shape[:2]
    logp = F.log_softmax(output.float().reshape(b, k, -1), dim=-1)
    t = target.float().reshape(b, k, -1)
    t = t / t.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    kl = (torch.xlogy(t, t) - t * logp).sum(dim=-1)  # (B, K)
    return _masked_mean(kl, visible)


def mse(
    output: torch.Tensor, target: torch.Tensor, visible: torch.Tensor, target_scale: float = 1.0, **_
) -> torch.Tensor:
    """Mean squared error against targets scaled to peak ``target_scale``."""
    per = (output.float() - target.float() * target_scale).square().mean(dim=(-2, -1))  # (B, K)
    return _masked_mean(per, visible)


@dataclasses.dataclass(frozen=True)
class Loss:
    fn: Callable[..., torch.Tensor]
    output: str  # "logits": spatial log-softmax gives the log-heatmap; "heatmap": the map itself


LOSSES = {"softmax_ce": Loss(softmax_ce, "logits"), "mse": Loss(mse, "heatmap")}


def get_loss(name: str) -> Loss:
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    return LOSSES[name]


def log_heatmaps(output: torch.Tensor, kind: str) -> torch.Tensor:
    """Network output -> log-heatmaps ``(B, K, h, w)`` for :meth:`HeatmapCodec.decode`."""
    if kind == "logits":
        b, k, h, w = output.shape
        return F.log_softmax(output.float().reshape(b, k, -1), dim=-1).reshape(b, k, h, w)
    if kind == "heatmap":
        return output.float().clamp_min(1e-10).log()
    raise KeyError(f"unknown output kind {kind!r}; valid: logits, heatmap")
