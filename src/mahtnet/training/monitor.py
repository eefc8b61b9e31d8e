"""Training diagnostics: per-component gradient norms, activation statistics and the
per-parameter gradient magnitudes of the gradient-flow plot."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from mahtnet.models.hooks import forward_with_hooks


def component_of(model: nn.Module, name: str) -> str:
    """Which component (``model.components``: encoder / transformer / decoder / head) owns
    parameter ``name``; ``"other"`` if none (e.g. learned loss weights)."""
    for component, prefixes in model.components.items():
        if name.startswith(prefixes):
            return component
    return "other"


def named_components(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Trainable and frozen parameters by component, in registration (forward) order."""
    out: dict[str, list[tuple[str, nn.Parameter]]] = {c: [] for c in model.components}
    for name, p in model.named_parameters():
        out.setdefault(component_of(model, name), []).append((name, p))
    return out


class GradientMonitor:
    """Accumulates, per optimizer step, each component's gradient L2 norm and each parameter's
    mean |gradient|; :meth:`epoch_summary` returns the epoch means and resets."""

    def __init__(self, model: nn.Module):
        self.groups = {
            c: [(n, p) for n, p in params if p.requires_grad] for c, params in named_components(model).items()
        }
        self.component = {n: c for c, params in self.groups.items() for n, _ in params}
        self._reset()

    def _reset(self) -> None:
        self.steps = 0
        self.norm_sums: dict[str, float] = defaultdict(float)
        self.abs_sums: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self) -> None:
        """Call after ``backward`` (gradients unscaled), before clipping."""
        self.steps += 1
        for component, params in self.groups.items():
            grads = [p.grad for _, p in params if p.grad is not None]
            if grads:
                norm = torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
                )
                self.norm_sums[component] += norm.item()
            for name, p in params:
                if p.grad is not None:
                    value = p.grad.abs().mean().float()
                    self.abs_sums[name] = self.abs_sums.get(name, 0.0) + value

    def epoch_summary(self) -> tuple[dict[str, float], dict[str, float]]:
        """``({"grad_norm_<component>": mean L2 norm}, {parameter: mean |grad|})``."""
        steps = max(self.steps, 1)
        norms = {f"grad_norm_{c}": self.norm_sums[c] / steps for c, p in self.groups.items() if p}
        means = {n: float(v) / steps for n, v in self.abs_sums.items()}
        self._reset()
        return norms, means


def _first_tensor(out) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (list, tuple)) and out:
        return _first_tensor(out[-1] if isinstance(out, list) else out[0])
    return None


def activation_stats(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Mean and standard deviation of each top-level component's output on ``x`` (eval mode):
    ``act_mean_<module>``, ``act_std_<module>`` (a list output, e.g. the encoder's features:
    its deepest map; a module list: its last module)."""
    stats: dict[str, float] = {}
    hooks = []
    for name, module in model.named_children():
        if isinstance(module, nn.ModuleList):  # e.g. the U-Net's down path: its last block
            module = module[-1]

        def hook(_m, _args, out, name=name):
            t = _first_tensor(out)
            if t is not None:
                t = t.float()
                stats[f"act_mean_{name}"] = t.mean().item()
                stats[f"act_std_{name}"] = t.std().item()

        hooks.append((module, hook))
    forward_with_hooks(model, x, hooks)
    return stats
