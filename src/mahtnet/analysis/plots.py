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
    """Predicted (red) vs ground-truth (green) landmarks, with their names, over an image."""
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


def plot_confidence(confidence: np.ndarray, errors_mm: np.ndarray, path: str | Path) -> Path:
    """Radial error against predicted confidence (peak probability), every (image, landmark),
    with the mean error per confidence decile."""
    c, e = np.ravel(confidence), np.ravel(errors_mm)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter(c, e, s=4, alpha=0.3)
    edges = np.unique(np.quantile(c, np.linspace(0, 1, 11)))
    if len(edges) > 2:
        bins = np.clip(np.digitize(c, edges[1:-1]), 0, len(edges) - 2)
        centres = [c[bins == b].mean() for b in range(len(edges) - 1) if np.any(bins == b)]
        means = [e[bins == b].mean() for b in range(len(edges) - 1) if np.any(bins == b)]
        ax.plot(centres, means, "r.-", label="mean per decile")
        ax.legend(fontsize=8)
    ax.set_xlabel("confidence (heatmap peak probability)")
    ax.set_ylabel("radial error (mm)")
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability(rel: dict, path: str | Path, title: str = "") -> Path:
    """Reliability of the expected error: mean observed against mean expected error per bin
    (on the diagonal: calibrated)."""
    x = [b["expected_mm"] for b in rel["bins"]]
    y = [b["observed_mm"] for b in rel["bins"]]
    top = max(max(x), max(y)) * 1.1
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, top], [0, top], "k--", lw=0.8, label="calibrated")
    ax.plot(x, y, "o-", label=f"test bins (error {rel['calibration_error_mm']:.2f} mm)")
    ax.set_xlabel("expected error (mm), fitted on validation")
    ax.set_ylabel("observed error (mm), test")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_paired_mre(mre_a: np.ndarray, mre_b: np.ndarray, name_a: str, name_b: str, path: str | Path) -> Path:
    """Per-image MRE of model B against model A (points below the diagonal: B better), and the
    histogram of the per-image differences B - A."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.6))
    top = float(max(mre_a.max(), mre_b.max())) * 1.05
    ax1.scatter(mre_a, mre_b, s=8, alpha=0.6)
    ax1.plot([0, top], [0, top], "k--", lw=0.8)
    ax1.set(xlim=(0, top), ylim=(0, top), xlabel=f"{name_a} image MRE (mm)")
    ax1.set_ylabel(f"{name_b} image MRE (mm)")
    d = mre_b - mre_a
    ax2.hist(d, bins=30)
    ax2.axvline(0, color="k", lw=0.8)
    ax2.axvline(float(np.median(d)), color="r", lw=1, label=f"median {np.median(d):+.3f} mm")
    ax2.set(xlabel=f"{name_b} - {name_a} (mm)", ylabel="images")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_sdr_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path) -> Path:
    """SDR (%) against the radius threshold (mm) for several models: ``{name: (mm, sdr)}``."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, (mm, sdr) in curves.items():
        ax.plot(mm, sdr, label=name)
    for t in (2.0, 2.5, 3.0, 4.0):
        ax.axvline(t, color="0.85", lw=0.8, zorder=0)
    ax.set(xlabel="radius (mm)", ylabel="SDR (%)", ylim=(0, 100.5))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_per_landmark_bars(names: Sequence[str], values: dict[str, np.ndarray], path: str | Path) -> Path:
    """Per-landmark MRE (mm) of several models as grouped horizontal bars."""
    fig, ax = plt.subplots(figsize=(6, 0.32 * len(names) + 1.2))
    y = np.arange(len(names))
    h = 0.8 / max(1, len(values))
    for i, (model, v) in enumerate(values.items()):
        ax.barh(y + i * h - 0.4 + h / 2, v, height=h, label=model)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("MRE (mm)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_robustness(results: dict[str, dict], path: str | Path) -> Path:
    """MRE against severity, one panel per perturbation, one line per model (``results``:
    ``{model: robustness output}``); the clean MRE is severity index 0."""
    first = next(iter(results.values()))["perturbations"]
    fig, axes = plt.subplots(
        2, (len(first) + 1) // 2, figsize=(2.6 * ((len(first) + 1) // 2), 5.4), squeeze=False
    )
    for ax, name in zip(axes.flat, first, strict=False):
        for model, r in results.items():
            rows = r["perturbations"][name]["rows"]
            ax.plot(
                range(len(rows) + 1), [r["clean"]["mre_mm"], *(x["mre_mm"] for x in rows)], "o-", label=model
            )
            ax.set_xticks(range(len(rows) + 1), ["clean", *(f"{x['severity']:g}" for x in rows)], fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("test MRE (mm)")
    axes.flat[0].legend(fontsize=7)
    for ax in list(axes.flat)[len(first) :]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def plot_tradeoff(rows: dict[str, dict], path: str | Path) -> Path:
    """MRE against onnxruntime batch-1 latency (1 thread: the steadier figure on a shared
    2-core CPU), one labelled point per variant; the
    full model (first row) and its pruned versions (``pruned_*``) joined as a curve."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, r in rows.items():
        x, y = r["onnxruntime_1_threads_ms"], r["mre_mm"]
        ax.scatter([x], [y], s=30)
        ax.annotate(name, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    curve = [r for name, r in rows.items() if name.startswith("pruned_")]
    if curve:
        curve = [next(iter(rows.values())), *curve]
        ax.plot([r["onnxruntime_1_threads_ms"] for r in curve], [r["mre_mm"] for r in curve], "k--", lw=0.8)
    mres = [r["mre_mm"] for r in rows.values()]
    if max(mres) > 5 * min(mres):
        ax.set_yscale("log")
    ax.set_xlabel("onnxruntime latency, batch 1, 1 thread (ms)")
    ax.set_ylabel("test MRE (mm)")
    ax.set_title("accuracy against speed", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)
