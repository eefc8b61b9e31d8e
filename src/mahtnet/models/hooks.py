"""Reading intermediate outputs: one forward pass with temporary forward hooks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


@torch.no_grad()
def forward_with_hooks(model: nn.Module, x: torch.Tensor, hooks: list[tuple[nn.Module, Callable]]) -> None:
    """Run ``model(x)`` once in eval mode with each ``(module, hook)`` registered as a forward
    hook; the hooks are removed and the training mode restored afterwards."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
