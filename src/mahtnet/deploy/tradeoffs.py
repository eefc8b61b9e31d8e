"""The accuracy / speed / size trade-off of the deployment variants of a model: the full model,
its INT8 ONNX file and smaller networks (the students of knowledge distillation), each scored
on the same test images with arg-max decoding through onnxruntime and compared with the full
model by the paired Wilcoxon test."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mahtnet.analysis.stats import compare_paired
from mahtnet.data.preprocess import PreparedSet
from mahtnet.decoding import OnnxBackend
from mahtnet.deploy.export import decode_all, export_onnx, latency_ms, onnx_latency_ms
from mahtnet.deploy.memory import memory_columns
from mahtnet.metrics import radial_errors_mm, summarize


def parameters(checkpoint: str | Path) -> int:
    from mahtnet.models.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)["model_state"]
    return int(sum(v.numel() for k, v in state.items() if v.is_floating_point() and "running_" not in k))


def score_onnx(
    path: Path, data: PreparedSet, thresholds: Sequence[float]
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Summary (MRE, SD, median, SDR), errors ``(N, K)`` mm and arg-max landmarks ``(N, K, 2)``
    original px of an ONNX model on ``data``."""
    pred = decode_all(OnnxBackend(path), data)
    errors = radial_errors_mm(pred, data.landmarks_orig, data.spacing)
    return summarize(errors, thresholds), errors, pred


def variant_row(
    checkpoint: Path | None,
    onnx: Path,
    data: PreparedSet,
    thresholds: Sequence[float],
    repeats: int,
    peak_memory: bool = True,
) -> tuple[dict, np.ndarray]:
    """One row of the table: scores, size, parameters, batch-1 latency and (``peak_memory``) peak
    memory (onnxruntime, and PyTorch when there is a checkpoint), and the errors for the paired
    test."""
    row, errors, _ = score_onnx(onnx, data, thresholds)
    row["onnx_mb"] = onnx.stat().st_size / 2**20
    if checkpoint is not None:
        row["parameters"] = parameters(checkpoint)
        row |= latency_ms(checkpoint, onnx, data.images[0], repeats)
    else:
        row |= onnx_latency_ms(onnx, data.images[0], repeats)
    return row | (memory_columns(checkpoint, onnx) if peak_memory else {}), errors


def pruned_models(folder: Path | None) -> dict[str, Path]:
    """``{"pruned_<pct>": checkpoint}`` of the ``train_prune@<pct>`` stages' folder, by sparsity."""
    if folder is None:
        return {}
    found = {int(p.stem.removeprefix("sparsity_")): p for p in folder.glob("sparsity_*.pt")}
    if not found:
        raise FileNotFoundError(f"no pruned checkpoints (sparsity_<pct>.pt) in {folder}")
    return {f"pruned_{pct}": found[pct] for pct in sorted(found)}


def tradeoff(
    full: tuple[str, Path],
    int8: Path | None,
    models: dict[str, Path],
    data: PreparedSet,
    thresholds: Sequence[float],
    n_boot: int,
    repeats: int = 20,
    peak_memory: bool = True,
) -> dict[str, dict]:
    """``{variant: row}``: the full model first, then its INT8 file, then each other checkpoint;
    every row but the first with ``mre_diff_mm`` and ``wilcoxon_p`` against the full model;
    memory columns with ``peak_memory``. On a terminal, a progress bar on stderr: one step per
    variant."""
    rows, errors = {}, {}
    checkpoints = [full, *models.items()]
    bar = tqdm(total=len(checkpoints) + (int8 is not None), desc="trade-off", unit="model", disable=None)
    with tempfile.TemporaryDirectory() as tmp, bar:
        for name, ckpt in checkpoints:
            bar.set_postfix_str(name)
            onnx = export_onnx(ckpt, Path(tmp) / f"{name}.onnx")
            rows[name], errors[name] = variant_row(ckpt, onnx, data, thresholds, repeats, peak_memory)
            rows[name]["checkpoint_mb"] = ckpt.stat().st_size / 2**20
            bar.update()
        if int8 is not None:
            key = f"{full[0]}_int8"
            bar.set_postfix_str(key)
            rows[key], errors[key] = variant_row(None, int8, data, thresholds, repeats, peak_memory)
            rows[key]["parameters"] = rows[full[0]]["parameters"]
            bar.update()
    for name in rows:
        if name != full[0]:
            test = compare_paired(errors[full[0]], errors[name], thresholds, n_boot=n_boot)
            rows[name]["mre_diff_mm"] = rows[name]["mre_mm"] - rows[full[0]]["mre_mm"]
            rows[name]["wilcoxon_p"] = test["wilcoxon"]["p_value"]
            for t in (1, 2):
                key = f"onnxruntime_{t}_threads_ms"
                rows[name][f"latency_ratio_{t}_threads"] = rows[name][key] / rows[full[0]][key]
    return rows
