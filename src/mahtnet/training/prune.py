"""Structured (channel) pruning with torch-pruning, and the rebuilding of a pruned network
from its checkpoint.

torch-pruning traces the network once to find the *coupled* channel groups (a convolution's
output channels, the BatchNorm after it, every consumer's input channels, residual additions
and depthwise convolutions that must shrink together), ranks each group by the norm of its
weights and removes the lowest-ranked ones, so the pruned network is genuinely smaller and
faster. The landmark head's output (one map per landmark) and the modules named in
``prune.ignore`` (by default the transformer) keep their width.

A pruned checkpoint stores ordinary weights of the smaller shapes;
:func:`mahtnet.models.pruned.shrink_to` rebuilds the architecture by narrowing each layer of a
freshly built full model to those shapes. :func:`prune_stage_model` is stage ``prune``'s
pruning of its initial (stage-3) model, before :func:`mahtnet.training.stages.train` fine-tunes it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mahtnet.config import Params, PruneParams


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


def prune_stage_model(params: Params, model: nn.Module, sparsity: float | None) -> dict:
    """Stage ``prune``: remove ``sparsity`` of the channels of the full ``model`` in place
    before fine-tuning; returns what the checkpoint records of it."""
    if sparsity is None:
        raise ValueError("stage prune needs a sparsity (--sparsity-pct)")
    example = torch.zeros(1, 1, params.preprocess.height, params.preprocess.width)
    info = prune_model(model, sparsity, params.prune, example)
    print(
        f"pruned {sparsity:.0%} of the channels: {info['parameters_before'] / 1e6:.2f} M -> "
        f"{info['parameters_after'] / 1e6:.2f} M parameters"
    )
    return info | {"importance": params.prune.importance, "ignore": list(params.prune.ignore)}
