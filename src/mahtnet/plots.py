"""Figures (matplotlib, Agg backend); every function writes one PNG atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mahtnet.io import atomic_write  # noqa: E402


def _save(fig: plt.Figure, path: str | Path) -> Path:
    def write(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")

    try:
        return atomic_write(path, write)
    finally:
        plt.close(fig)


def plot_targets(
    images: np.ndarray, heatmaps: np.ndarray, landmarks: np.ndarray, ids: Sequence[str], path: str | Path
) -> Path:
    """Each image ``(H, W)`` with the max over its heatmaps ``(K, h, w)`` and its landmarks."""
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 4.2), squeeze=False)
    for ax, image, hm, pts, name in zip(axes[0], images, heatmaps, landmarks, ids, strict=True):
        h, w = image.shape
        ax.imshow(image, cmap="gray", extent=(-0.5, w - 0.5, h - 0.5, -0.5))
        peaks = np.ma.masked_less(hm.max(axis=0).astype(np.float32), 0.05)  # targets only
        ax.imshow(peaks, cmap="autumn", alpha=0.7, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
        ax.scatter(pts[:, 0], pts[:, 1], s=6, c="cyan", marker="+", linewidths=0.6)
        ax.set_title(f"{name}: {len(pts)} targets", fontsize=9)
        ax.axis("off")
    return _save(fig, path)


def plot_predictions(
    image: np.ndarray, pred: np.ndarray, gt: np.ndarray, names: Sequence[str], title: str, path: str | Path
) -> Path:
    """Predicted (red) vs ground-truth (green) landmarks over an original-resolution image."""
    fig, ax = plt.subplots(figsize=(6, 7.4))
    ax.imshow(image, cmap="gray")
    for p, g, name in zip(pred, gt, names, strict=True):
        ax.plot([p[0], g[0]], [p[1], g[1]], "y-", lw=0.8)
        ax.annotate(name, g, color="white", fontsize=5, xytext=(3, 3), textcoords="offset points")
    ax.scatter(gt[:, 0], gt[:, 1], s=10, c="lime", label="ground truth")
    ax.scatter(pred[:, 0], pred[:, 1], s=10, c="red", marker="x", label="prediction")
    ax.legend(loc="lower left", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return _save(fig, path)


def plot_attention_maps(image: np.ndarray, maps: dict[str, np.ndarray], path: str | Path) -> Path:
    """An input image ``(H, W)`` and, beside it, each attention map ``(h, w)`` (from
    :func:`mahtnet.models.maht_net.attention_maps`) stretched over it."""
    n = len(maps) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.4), squeeze=False)
    h, w = image.shape
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)
    axes[0, 0].imshow(image, cmap="gray", extent=extent)
    axes[0, 0].set_title("input", fontsize=8)
    for ax, (name, amap) in zip(axes[0, 1:], maps.items(), strict=True):
        ax.imshow(image, cmap="gray", extent=extent)
        ax.imshow(np.asarray(amap, dtype=np.float32), cmap="jet", alpha=0.5, extent=extent)
        ax.set_title(name, fontsize=8)
    for ax in axes[0]:
        ax.axis("off")
    return _save(fig, path)


def plot_grad_flow(grad_means: dict[str, float], components: dict[str, str], path: str | Path) -> Path:
    """Mean absolute gradient of each parameter tensor (log scale), in forward order, coloured
    by component: where the gradient vanishes or explodes."""
    names = list(grad_means)
    values = np.array([max(grad_means[n], 1e-12) for n in names])
    comps = [components[n] for n in names]
    palette = dict(zip(dict.fromkeys(comps), plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    fig, ax = plt.subplots(figsize=(max(6.0, len(names) * 0.04), 3.5))
    ax.bar(np.arange(len(names)), values, width=1.0, color=[palette[c] for c in comps])
    ax.set_yscale("log")
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_xticks([])
    ax.set_xlabel("parameter tensors, input -> output")
    ax.set_ylabel("mean |gradient| (last epoch)")
    for comp, color in palette.items():
        ax.bar([], [], color=color, label=comp)
    ax.legend(loc="upper left", fontsize=8, ncol=len(palette))
    fig.tight_layout()
    return _save(fig, path)
