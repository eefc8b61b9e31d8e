"""Heatmap and coordinate losses, combined by weights in :class:`CompositeLoss`.

Shapes: network heatmaps ``(B, K, h, w)`` (``LandmarkOutput.heatmaps``), Gaussian targets
with unit peaks ``(B, K, h, w)``, visibility ``(B, K)`` bool, coordinates ``(B, K, 2)``
``(x, y)`` in network-input pixels (``LandmarkOutput.coords``). Every term is computed in
float32, is a per-landmark value averaged over the visible landmarks only, and is zero at
its optimum (``focal_heatmap``: at the one-hot map of its positives, see there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

OUTPUT_KINDS = ("logits", "heatmap")
TERMS = ("softmax_ce", "mse", "l1_coords", "wing", "adaptive_wing", "ssim", "focal")
_HEATMAP_TERMS = ("mse", "adaptive_wing", "ssim", "focal")  # terms on predicted_heatmaps


def _masked_mean(per_landmark: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Mean of ``per_landmark (B, K)`` over visible landmarks (0 when none is visible).
    ``where`` rather than a product, so non-finite values of hidden landmarks do not leak."""
    kept = torch.where(visible, per_landmark, torch.zeros_like(per_landmark))
    return kept.sum() / visible.sum().clamp_min(1).to(per_landmark.dtype)


def _coord_diff(coords: torch.Tensor, target_coords: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """``coords - target_coords`` ``(B, K, 2)``, zeroed for hidden landmarks (their targets may
    be anything, NaN included, and must give no gradient)."""
    diff = coords.float() - target_coords.float()
    return torch.where(visible[..., None], diff, torch.zeros_like(diff))


def softmax_ce(logits: torch.Tensor, target: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """KL divergence between the target Gaussian (normalised to a distribution) and the
    spatial softmax of the logits. Zero at the optimum; it does not stall on near-zero
    outputs the way MSE on unit-peak Gaussians does."""
    b, k = logits.shape[:2]
    logp = F.log_softmax(logits.float().reshape(b, k, -1), dim=-1)
    t = target.float().reshape(b, k, -1)
    t = t / t.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    kl = (torch.xlogy(t, t) - t * logp).sum(dim=-1)  # (B, K)
    return _masked_mean(kl, visible)


def heatmap_mse(pred: torch.Tensor, target: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of the squared error between unit-peak heatmaps."""
    per = (pred.float() - target.float()).square().mean(dim=(-2, -1))  # (B, K)
    return _masked_mean(per, visible)


def l1_coords(coords: torch.Tensor, target_coords: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """``|dx| + |dy|`` (input px) per landmark, averaged over visible landmarks."""
    return _masked_mean(_coord_diff(coords, target_coords, visible).abs().sum(dim=-1), visible)


def wing(
    coords: torch.Tensor,
    target_coords: torch.Tensor,
    visible: torch.Tensor,
    width: float = 10.0,
    curvature: float = 2.0,
) -> torch.Tensor:
    """Wing loss (Feng et al., "Wing Loss for Robust Facial Landmark Localisation with
    Convolutional Neural Networks", CVPR 2018) on each coordinate difference ``x`` (input px):
    ``w ln(1 + |x|/eps)`` if ``|x| < w`` else ``|x| - C``, ``C = w - w ln(1 + w/eps)``
    (``w = width``, ``eps = curvature``); summed over ``x, y`` per landmark as in the paper."""
    d = _coord_diff(coords, target_coords, visible).abs()
    c = width - width * math.log1p(width / curvature)
    per = torch.where(d < width, width * torch.log1p(d / curvature), d - c)
    return _masked_mean(per.sum(dim=-1), visible)


def adaptive_wing(
    pred: torch.Tensor,
    target: torch.Tensor,
    visible: torch.Tensor,
    omega: float = 14.0,
    theta: float = 0.5,
    epsilon: float = 1.0,
    alpha: float = 2.1,
) -> torch.Tensor:
    """Adaptive Wing loss (Wang et al., "Adaptive Wing Loss for Robust Face Alignment via
    Heatmap Regression", ICCV 2019) per pixel of unit-peak heatmaps, exponent ``alpha - y``;
    mean over pixels. The paper's dilated-foreground weight map is not applied."""
    y = target.float()
    d = (pred.float() - y).abs()
    p = alpha - y
    r = (theta / epsilon) ** p
    a = omega / (1 + r) * p * (theta / epsilon) ** (p - 1) / epsilon
    c = theta * a - omega * torch.log1p(r)
    per = torch.where(d < theta, omega * torch.log1p((d / epsilon).pow(p)), a * d - c)
    return _masked_mean(per.mean(dim=(-2, -1)), visible)


def _gaussian_window(window: int, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, window, window)


def ssim_loss(
    pred: torch.Tensor, target: torch.Tensor, visible: torch.Tensor, window: int = 11
) -> torch.Tensor:
    """``1 - SSIM`` per heatmap (Wang et al., "Image Quality Assessment: From Error Visibility
    to Structural Similarity", IEEE TIP 2004): Gaussian window ``window`` x ``window`` of
    sigma 1.5, ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with ``L = 1``; the SSIM map is
    averaged over all pixels. Borders are zero-padded and the local statistics renormalised
    by the window mass inside the map, so they stay weighted means over real pixels."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"SSIM window must be a positive odd size, got {window}")
    b, k, h, w = pred.shape
    x = pred.float().reshape(b * k, 1, h, w)
    y = target.float().reshape(b * k, 1, h, w)
    kernel = _gaussian_window(window).to(x.device)

    def local_mean(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, kernel, padding=window // 2)

    mass = local_mean(torch.ones(1, 1, h, w, device=x.device))
    mu_x, mu_y = local_mean(x) / mass, local_mean(y) / mass
    var_x = local_mean(x * x) / mass - mu_x**2
    var_y = local_mean(y * y) / mass - mu_y**2
    cov = local_mean(x * y) / mass - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return _masked_mean(1 - ssim.reshape(b, k, -1).mean(dim=-1), visible)


def focal_heatmap(
    pred: torch.Tensor, target: torch.Tensor, visible: torch.Tensor, alpha: float = 2.0, beta: float = 4.0
) -> torch.Tensor:
    """Penalty-reduced pixel-wise focal loss (Law & Deng, "CornerNet: Detecting Objects as
    Paired Keypoints", ECCV 2018). Positives: the pixels equal to their map's maximum (one
    per map unless tied; sub-pixel Gaussians rarely reach 1). ``-(1-p)^alpha log p`` on
    positives, ``-(1-y)^beta p^alpha log(1-p)`` elsewhere, ``p`` clamped to ``(1e-6, 1-1e-6)``;
    summed over each map and divided by its number of positives. Minimal (about 0) at the
    one-hot map of the positives, not at ``pred == target``."""
    p = pred.float().clamp(1e-6, 1 - 1e-6)
    y = target.float()
    pos = y >= y.amax(dim=(-2, -1), keepdim=True)
    per_pixel = torch.where(
        pos, -(1 - p).pow(alpha) * torch.log(p), -(1 - y).pow(beta) * p.pow(alpha) * torch.log1p(-p)
    )
    per = per_pixel.sum(dim=(-2, -1)) / pos.sum(dim=(-2, -1)).clamp_min(1)
    return _masked_mean(per, visible)


class UncertaintyWeighting(nn.Module):
    """Learned task weighting (Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty
    to Weigh Losses for Scene Geometry and Semantics", CVPR 2018): one log-variance ``s_i``
    per term (initialised to 0), ``total = sum_i exp(-s_i) L_i + s_i``. This drops the paper's
    regression factor 1/2 (i.e. is twice ``L/(2 sigma^2) + log sigma``); the optimum
    ``s_i = log L_i`` is the same. ``s_i`` are parameters: give them to the optimizer."""

    def __init__(self, names: Sequence[str]):
        super().__init__()
        if not names:
            raise ValueError("uncertainty weighting needs at least one term")
        self.names = tuple(names)
        self.log_vars = nn.Parameter(torch.zeros(len(self.names)))

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        if set(losses) != set(self.names):
            raise KeyError(f"expected terms {', '.join(self.names)}, got {', '.join(losses)}")
        s = self.log_vars
        return sum(torch.exp(-s[i]) * losses[n] + s[i] for i, n in enumerate(self.names))

    def log_var(self, name: str) -> torch.Tensor:
        return self.log_vars[self.names.index(name)]


def predicted_heatmaps(
    output: torch.Tensor, target: torch.Tensor, output_kind: str, target_scale: float
) -> torch.Tensor:
    """Network output -> unit-peak heatmap comparable with ``target``. ``"logits"``: the
    spatial softmax times each target map's sum (a perfect prediction equals the target);
    ``"heatmap"``: ``output / target_scale`` (the network regresses Gaussians of that peak)."""
    if output_kind == "logits":
        b, k, h, w = output.shape
        prob = F.softmax(output.float().reshape(b, k, -1), dim=-1).reshape(b, k, h, w)
        return prob * target.float().sum(dim=(-2, -1), keepdim=True)
    if output_kind == "heatmap":
        return output.float() / target_scale
    raise KeyError(f"unknown output kind {output_kind!r}; valid: {', '.join(OUTPUT_KINDS)}")


class CompositeLoss(nn.Module):
    """Weighted sum of the :data:`TERMS` with positive weight (zero-weight terms are not
    computed), or with ``uncertainty`` their :class:`UncertaintyWeighting` combination of
    ``weight * term``. ``output`` is the network's output kind (see
    :func:`mahtnet.models.head.log_heatmaps`)."""

    def __init__(
        self,
        weights: dict[str, float],
        output: str,
        uncertainty: bool,
        target_scale: float = 100.0,
        wing_width: float = 10.0,
        wing_curvature: float = 2.0,
        adaptive_wing_omega: float = 14.0,
        adaptive_wing_theta: float = 0.5,
        adaptive_wing_epsilon: float = 1.0,
        adaptive_wing_alpha: float = 2.1,
        focal_alpha: float = 2.0,
        focal_beta: float = 4.0,
        ssim_window: int = 11,
    ):
        super().__init__()
        for name, weight in weights.items():
            if name not in TERMS:
                raise KeyError(f"unknown loss term {name!r}; valid: {', '.join(TERMS)}")
            if weight < 0:
                raise ValueError(f"loss weight {name} must be non-negative, got {weight}")
        self.weights = {n: float(weights[n]) for n in TERMS if weights.get(n, 0) > 0}
        if not self.weights:
            raise ValueError(f"at least one loss weight must be positive, got {weights}")
        if output not in OUTPUT_KINDS:
            raise KeyError(f"unknown output kind {output!r}; valid: {', '.join(OUTPUT_KINDS)}")
        if output == "heatmap" and "softmax_ce" in self.weights:
            raise ValueError('loss term softmax_ce needs output "logits", not "heatmap"')
        self.output = output
        self.target_scale = target_scale
        self.options = {
            "wing": {"width": wing_width, "curvature": wing_curvature},
            "adaptive_wing": {
                "omega": adaptive_wing_omega,
                "theta": adaptive_wing_theta,
                "epsilon": adaptive_wing_epsilon,
                "alpha": adaptive_wing_alpha,
            },
            "focal": {"alpha": focal_alpha, "beta": focal_beta},
            "ssim": {"window": ssim_window},
        }
        self.uncertainty = UncertaintyWeighting(tuple(self.weights)) if uncertainty else None

    @classmethod
    def from_params(cls, p, weights: dict[str, float], uncertainty: bool) -> CompositeLoss:
        """The loss of ``params.yaml``'s ``loss`` block (:class:`mahtnet.config.LossParams`)."""
        return cls(
            weights,
            output=p.output,
            uncertainty=uncertainty,
            target_scale=p.mse_target_scale,
            wing_width=p.wing_width,
            wing_curvature=p.wing_curvature,
            adaptive_wing_omega=p.adaptive_wing_omega,
            adaptive_wing_theta=p.adaptive_wing_theta,
            adaptive_wing_epsilon=p.adaptive_wing_epsilon,
            adaptive_wing_alpha=p.adaptive_wing_alpha,
            focal_alpha=p.focal_alpha,
            focal_beta=p.focal_beta,
            ssim_window=p.ssim_window,
        )

    def terms(
        self,
        heatmaps: torch.Tensor,
        coords: torch.Tensor,
        target: torch.Tensor,
        target_coords: torch.Tensor,
        visible: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Unweighted value of every term with positive weight."""
        pred = None
        if any(n in self.weights for n in _HEATMAP_TERMS):
            pred = predicted_heatmaps(heatmaps, target, self.output, self.target_scale)
        o = self.options
        fns = {
            "softmax_ce": lambda: softmax_ce(heatmaps, target, visible),
            "mse": lambda: heatmap_mse(pred, target, visible),
            "l1_coords": lambda: l1_coords(coords, target_coords, visible),
            "wing": lambda: wing(coords, target_coords, visible, **o["wing"]),
            "adaptive_wing": lambda: adaptive_wing(pred, target, visible, **o["adaptive_wing"]),
            "ssim": lambda: ssim_loss(pred, target, visible, **o["ssim"]),
            "focal": lambda: focal_heatmap(pred, target, visible, **o["focal"]),
        }
        return {n: fns[n]() for n in self.weights}

    def forward(
        self,
        heatmaps: torch.Tensor,
        coords: torch.Tensor,
        target: torch.Tensor,
        target_coords: torch.Tensor,
        visible: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and, for logging, each term's detached unweighted value (with
        uncertainty also ``logvar_<term>``)."""
        values = self.terms(heatmaps, coords, target, target_coords, visible)
        weighted = {n: self.weights[n] * v for n, v in values.items()}
        total = sum(weighted.values()) if self.uncertainty is None else self.uncertainty(weighted)
        log = {n: v.detach() for n, v in values.items()}
        if self.uncertainty is not None:
            log |= {f"logvar_{n}": self.uncertainty.log_var(n).detach() for n in values}
        return total, log


def heatmap_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Knowledge distillation between heatmap logits ``(B, K, h, w)`` (Hinton et al. 2015, per
    landmark over space): ``T^2 * mean_k KL(softmax(teacher / T) || softmax(student / T))``;
    zero when the two agree up to a constant per heatmap. The teacher gets no gradient."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student heatmaps {tuple(student.shape)} and teacher's {tuple(teacher.shape)} differ in shape"
        )
    b, k = student.shape[:2]
    log_s = F.log_softmax(student.float().reshape(b, k, -1) / temperature, dim=-1)
    log_t = F.log_softmax(teacher.detach().float().reshape(b, k, -1) / temperature, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim=-1)
    return temperature**2 * kl.mean()
