"""ONNX export of a trained model, and its parity and latency against PyTorch.

A coarse model's graph is :class:`mahtnet.models.readout.HeatmapNet`: input ``images`` ``(batch, 1,
H, W)`` float32 in [0, 1], output ``log_heatmaps`` ``(batch, K, h, w)``. A refiner's is
:class:`mahtnet.models.readout.RefinerNet`: inputs ``patches`` ``(batch, 1, P, P)`` and ``landmark``
``(batch,)``, output ``log_probs`` ``(batch, P, P)``. The batch axis is dynamic. The model
card (:meth:`mahtnet.models.card.CheckpointCard.deployed`: kind, architecture, input size,
heatmap sigma and stride, landmark names, training data; a refiner's patch resolution) is
stored as the ONNX metadata entry ``mahtnet``, so ``mahtnet predict --model X.onnx --refiner
R.onnx`` needs nothing else.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mahtnet.data.fine import FineSet
from mahtnet.data.preprocess import PreparedSet
from mahtnet.decoding import LandmarkReader, OnnxBackend, OnnxRefiner, TorchBackend, TorchRefiner
from mahtnet.decoding.backends import ONNX_META_KEY
from mahtnet.decoding.reader import refine_landmarks
from mahtnet.io import atomic_write
from mahtnet.metrics import radial_errors_mm
from mahtnet.models.card import CheckpointCard, sha256
from mahtnet.models.checkpoint import load_checkpoint, model_from_checkpoint, read_card
from mahtnet.models.readout import HeatmapNet

OPSET = 17
THREADS = (1, 2)  # CPU threads of the latency figures


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = OPSET) -> Path:
    """Write a coarse ``checkpoint``'s network as ONNX (atomically) with its card as metadata."""
    payload = load_checkpoint(checkpoint)
    model, _, output_kind = model_from_checkpoint(payload)
    net = HeatmapNet(model, output_kind).eval()
    example = (torch.zeros(1, 1, *CheckpointCard.of(payload["meta"]).input_size),)
    names = (["images"], ["log_heatmaps"], {"images": {0: "batch"}, "log_heatmaps": {0: "batch"}})
    return _write_onnx(net, example, names, _card(checkpoint), out, opset)


def export_refiner_onnx(checkpoint: str | Path, out: str | Path, opset: int = OPSET) -> Path:
    """Write a refiner checkpoint as ONNX (atomically): inputs ``patches (B, 1, P, P)`` float32
    in [0, 1] and ``landmark (B,)`` int64, output ``log_probs (B, P, P)``
    (:class:`mahtnet.models.readout.RefinerNet`), with its card as metadata."""
    refiner = TorchRefiner(checkpoint, "cpu")
    size = refiner.card.input_size[0]
    example = (torch.zeros(2, 1, size, size), torch.zeros(2, dtype=torch.int64))
    axes = {"patches": {0: "batch"}, "landmark": {0: "batch"}, "log_probs": {0: "batch"}}
    names = (["patches", "landmark"], ["log_probs"], axes)
    return _write_onnx(refiner.net.eval(), example, names, _card(checkpoint), out, opset)


def _card(checkpoint: str | Path) -> dict[str, Any]:
    deployed = read_card(checkpoint).deployed()
    return deployed | {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256(checkpoint)}


def _write_onnx(net: torch.nn.Module, example: tuple, names: tuple, card: dict, out, opset: int) -> Path:
    import onnx

    inputs, outputs, axes = names

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():  # tracer notes on shape checks that are constant here
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net, example, str(tmp), dynamo=False, opset_version=opset,
                input_names=inputs, output_names=outputs, dynamic_axes=axes,
            )  # fmt: skip
        graph = onnx.load(str(tmp))
        entry = graph.metadata_props.add()
        entry.key, entry.value = ONNX_META_KEY, json.dumps(card)
        onnx.checker.check_model(graph)
        onnx.save(graph, str(tmp))

    return atomic_write(out, write)


def decode_all(backend, data: PreparedSet, batch_size: int = 8) -> np.ndarray:
    """Arg-max landmarks ``(N, K, 2)`` original px of every prepared image."""
    return LandmarkReader(backend, batch_size=batch_size).read_prepared(data).final


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000.0)


def onnx_latency_ms(
    onnx_path: Path, image: np.ndarray, repeats: int, key: str = "onnxruntime_{}_threads_ms"
) -> dict[str, float]:
    """onnxruntime latency at batch 1 (one prepared image ``(H, W)``) with 1 and 2 threads,
    under ``key.format(threads)``."""
    out = {}
    for threads in THREADS:
        backend = OnnxBackend(onnx_path, threads)
        out[key.format(threads)] = median_ms(lambda b=backend: b(image[None]), repeats)
    return out


def latency_ms(checkpoint: Path, onnx_path: Path, image: np.ndarray, repeats: int) -> dict[str, float]:
    """Network latency at batch 1 (one prepared image): PyTorch and onnxruntime, 1 and 2 threads."""
    out = {}
    threads_before = torch.get_num_threads()
    torch_backend = TorchBackend(checkpoint, "cpu")
    for threads in THREADS:
        torch.set_num_threads(threads)
        out[f"pytorch_{threads}_threads_ms"] = median_ms(lambda: torch_backend(image[None]), repeats)
    torch.set_num_threads(threads_before)
    return out | onnx_latency_ms(onnx_path, image, repeats)


def parity(checkpoint: Path, onnx_path: Path, data: PreparedSet, repeats: int = 10) -> dict[str, Any]:
    """PyTorch vs onnxruntime on ``data``: the landmark difference (original px) and each MRE."""
    ref = decode_all(TorchBackend(checkpoint, "cpu"), data)
    got = decode_all(OnnxBackend(onnx_path), data)
    latency = latency_ms(checkpoint, onnx_path, data.images[0], repeats)
    return _parity_row(onnx_path, data, ref, got) | {"latency_batch1": latency}


def refiner_parity(
    checkpoint: Path, onnx_path: Path, coarse: Path, data: PreparedSet, fine: FineSet
) -> dict[str, Any]:
    """The refiner on PyTorch vs onnxruntime, from the same arg-max landmarks of the
    ``coarse`` checkpoint on ``data`` (``fine``: the same images at the refiner's resolution):
    the refined landmark difference (original px) and each refined MRE."""
    if list(fine.ids) != list(data.ids):
        raise ValueError("the fine-resolution images are not the prepared split (re-run prepare_fine)")
    start = decode_all(TorchBackend(coarse, "cpu"), data)
    ref = refine_landmarks(TorchRefiner(checkpoint, "cpu"), fine, start)[0]
    got = refine_landmarks(OnnxRefiner(onnx_path), fine, start)[0]
    return _parity_row(onnx_path, data, ref, got)


def _parity_row(onnx_path: Path, data: PreparedSet, ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """The ONNX file, and PyTorch's landmarks ``ref`` vs onnxruntime's ``got`` (original px):
    their largest and mean difference and each MRE against the official ground truth."""
    diff = np.linalg.norm(got - ref, axis=-1)
    return {
        "onnx_file": str(onnx_path),
        "onnx_mb": onnx_path.stat().st_size / 2**20,
        "opset": OPSET,
        "images": len(data.images),
        "max_diff_px": float(diff.max()),
        "mean_diff_px": float(diff.mean()),
        "mre_mm_pytorch": float(radial_errors_mm(ref, data.official_orig, data.spacing).mean()),
        "mre_mm_onnx": float(radial_errors_mm(got, data.official_orig, data.spacing).mean()),
    }


def named_path(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` (a command-line argument of the export and optimise stages) ->
    ``(name, Path)``; ``ValueError`` otherwise (argparse makes it a usage error)."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)
