"""Loading a channel-pruned network (:mod:`mahtnet.training.prune` writes them): its weights
have smaller shapes than the architecture the ``model`` block builds, so the layers are
narrowed to them first. Loading needs this, training does not: it lives with the models."""

from __future__ import annotations

import torch
from torch import nn


def shrink_to(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Narrow the layers of ``model`` (the full architecture) to the shapes in ``state`` (a
    pruned network's weights) and load them. Convolutions, BatchNorm, Linear and LayerNorm are
    resized (a depthwise convolution keeps one group per channel), and a loose parameter (the
    positional grid) takes its new shape."""
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        shapes = {k: state[prefix + k].shape for k in _own_tensors(module) if prefix + k in state}
        if any(shapes[k] != getattr(module, k).shape for k in shapes):
            _resize(module, shapes)
    model.load_state_dict(state)
    return model


def _own_tensors(module: nn.Module) -> list[str]:
    return [*module._parameters, *module._buffers]


def _resize(module: nn.Module, shapes: dict[str, torch.Size]) -> None:
    weight = shapes.get("weight")
    if isinstance(module, nn.Conv2d) and weight is not None:
        depthwise = module.groups > 1 and module.groups == module.in_channels
        module.out_channels = weight[0]
        module.in_channels = weight[0] if depthwise else weight[1] * module.groups
        module.groups = weight[0] if depthwise else module.groups
    elif isinstance(module, nn.modules.batchnorm._BatchNorm) and weight is not None:
        module.num_features = weight[0]
    elif isinstance(module, nn.Linear) and weight is not None:
        module.out_features, module.in_features = weight
    elif isinstance(module, nn.LayerNorm) and weight is not None:
        module.normalized_shape = tuple(weight)
    for key, shape in shapes.items():
        old = getattr(module, key)
        new = torch.empty(shape, dtype=old.dtype)
        if key in module._parameters:
            module._parameters[key] = nn.Parameter(new, requires_grad=old.requires_grad)
        else:
            module._buffers[key] = new
