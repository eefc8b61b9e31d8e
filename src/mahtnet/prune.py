"""Structured (channel) pruning with torch-pruning, and the rebuilding of a pruned network
from its checkpoint.

torch-pruning traces the network once to find the *coupled* channel groups (a convolution's
output channels, the BatchNorm after it, every consumer's input channels, residual additions
and depthwise convolutions that must shrink together), ranks each group by the norm of its
weights and removes the lowest-ranked ones, so the pruned network is genuinely smaller and
faster. The landmark head's output (one map per landmark) and the modules named in
``prune.ignore`` (by default the transformer) keep their width.

A pruned checkpoint stores ordinary weights of the smaller shapes; :func:`shrink_to` rebuilds
the architecture by narrowing each layer of a freshly built full model to those shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mahtnet.config import PruneParams


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def ignored_modules(model: nn.Module, prefixes: Sequence[str]) -> list[nn.Module]:
    """The modules whose names start with one of ``prefixes`` (their output channels are kept)."""
    return [m for name, m in model.named_modules() if name and name.startswith(tuple(prefixes))]


def prune_model(model: nn.Module, sparsity: float, p: PruneParams, example: torch.Tensor) -> dict:
    """Remove ``sparsity`` (0..1) of the output channels of every prunable layer of ``model``
    (in place, uniformly per layer), ranked by the ``p.importance`` norm of each coupled group.
    Returns the parameter counts before and after. The transformer's positional grid (a loose
    parameter) follows its channel dimension 1."""
    import torch_pruning as tp

    if not 0 < sparsity < 1:
        raise ValueError(f"pruning sparsity must be in (0, 1), got {sparsity}")
    before = count_parameters(model)
    was_training = model.training
    model.eval()
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p={"l1": 1, "l2": 2}[p.importance]),
        pruning_ratio=sparsity,
        ignored_layers=ignored_modules(model, p.ignore),
        round_to=p.round_to,
        output_transform=lambda out: out.heatmaps.sum(),
        unwrapped_parameters=[(q, 1) for n, q in model.named_parameters() if n.endswith(".pos")],
    )
    pruner.step()
    model.train(was_training)
    return {"sparsity": sparsity, "parameters_before": before, "parameters_after": count_parameters(model)}


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
