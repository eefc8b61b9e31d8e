"""Landmarks of new X-rays: any trained model (a checkpoint or its ONNX export) on image files
that carry no annotation.

A *backend* maps letterboxed network inputs ``(B, H, W)`` uint8 to log-heatmaps
``(B, K, h, w)``: :class:`TorchBackend` (a ``.pt`` checkpoint) or :class:`OnnxBackend` (an
``.onnx`` file from the export stage; onnxruntime only, PyTorch is not imported). Decoding
is NumPy: the arg-max (DARK sub-pixel), then, when a shape prior is given and the pixel
spacing is known, shape-consistent decoding (:mod:`mahtnet.shape_decode`), then, with a
refiner checkpoint (PyTorch), the coarse-to-fine refinement (:mod:`mahtnet.refine`).

**Confidence.** Each landmark's confidence is the peak probability of its heatmap (a spatial
softmax) divided by the peak of the training target, a unit-mass Gaussian of the model's
sigma (``1 / (2 pi sigma^2)``): about 1 when the network is as sharp as what it was trained
to draw, lower when it is unsure or torn between places. ``low_confidence`` flags
confidences below :data:`LOW_CONFIDENCE` (see ``docs/predict.md`` for how it relates to
the error).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mahtnet import clinical
from mahtnet.card import ModelCard, card_meta
from mahtnet.codec import HeatmapCodec
from mahtnet.data.images import XRay
from mahtnet.data.preprocess import Letterbox, letterbox_image
from mahtnet.shape_decode import ShapePrior, shape_consistent_decode

LOW_CONFIDENCE = 0.4  # about the 1st-5th percentile on the ISBI validation images (docs/predict.md)
ONNX_META_KEY = "mahtnet"


def network_input(images: np.ndarray) -> np.ndarray:
    """Letterboxed uint8 images ``(B, H, W)`` -> the network input ``(B, 1, H, W)`` float32 in
    [0, 1] (NumPy's twin of :func:`mahtnet.data.dataset.image_to_tensor`, bit-equal)."""
    return (np.ascontiguousarray(images, dtype=np.float32) / np.float32(255.0))[:, None]


def ideal_peak(sigma: float) -> float:
    """Peak probability of a unit-mass Gaussian of ``sigma`` px: the target's sharpness."""
    return 1.0 / (2.0 * math.pi * sigma**2)


class OnnxBackend:
    """An exported ``.onnx`` model on onnxruntime (``threads``: intra-op threads, 0 = default)."""

    def __init__(self, path: str | Path, threads: int = 0, device: str = "cpu"):
        import onnxruntime as ort

        from mahtnet.data.isbi import DataError

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: model not found")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=onnx_providers(device))
        except Exception as err:  # onnxruntime raises its own types for damaged files
            raise DataError(f"{path}: not a readable ONNX model ({err})") from None
        meta = self.session.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY)
        if meta is None:
            raise DataError(f"{path}: an ONNX model without MAHT-Net metadata (use the export stage)")
        self.card = ModelCard.from_meta(path, "onnx", json.loads(meta))
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: network_input(images)})[0]


def onnx_providers(device: str) -> list[str]:
    """onnxruntime execution providers for ``device`` (auto: CUDA when onnxruntime has it)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise RuntimeError(f"--device cuda: onnxruntime has no CUDA provider (has {available})")
    return ["CPUExecutionProvider"]


class TorchBackend:
    """A training checkpoint on PyTorch."""

    def __init__(self, path: str | Path, device: str = "auto"):
        import torch

        from mahtnet.checkpoint import load_checkpoint, model_from_checkpoint
        from mahtnet.data.dataset import image_to_tensor
        from mahtnet.deploy import HeatmapNet
        from mahtnet.inference import select_device

        payload = load_checkpoint(path)
        model, _, output_kind = model_from_checkpoint(payload)
        self.device = select_device(device)
        self.net = HeatmapNet(model, output_kind).to(self.device).eval()
        self.card = ModelCard.from_meta(path, "pytorch", card_meta(payload["meta"]))
        self._torch, self._to_tensor = torch, image_to_tensor  # imported here: not on the ONNX path

    def __call__(self, images: np.ndarray) -> np.ndarray:
        with self._torch.no_grad():
            return self.net(self._to_tensor(images).to(self.device)).float().cpu().numpy()


def load_backend(path: str | Path, device: str = "auto", threads: int = 0) -> OnnxBackend | TorchBackend:
    """The backend for a model file: ``.onnx`` -> onnxruntime, anything else a checkpoint."""
    if Path(path).suffix.lower() == ".onnx":
        return OnnxBackend(path, threads, device)
    return TorchBackend(path, device)


@dataclasses.dataclass
class Prediction:
    """The landmarks of one X-ray (original px), their confidence, and how they were read."""

    xray: XRay
    spacing_mm: float | None
    spacing_source: str | None
    landmarks: np.ndarray  # (K, 2) original px (x, y)
    confidence: np.ndarray  # (K,) peak / target peak
    decoding: str  # arg-max | shape-consistent | refined


def letterbox_batch(xrays: Sequence[XRay], size: tuple[int, int]) -> tuple[np.ndarray, list[Letterbox]]:
    out = [letterbox_image(x.pixels, *size) for x in xrays]
    return np.stack([im for im, _ in out]), [box for _, box in out]


def decode_batch(
    logs: np.ndarray, codec: HeatmapCodec, boxes: Sequence[Letterbox], spacings, prior: ShapePrior | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Landmarks ``(B, K, 2)`` original px, peak probabilities ``(B, K)`` and each image's
    decoding: shape-consistent where a prior and the spacing are known, else the arg-max."""
    coords, peak = codec.decode(logs, is_log=True)
    how = []
    for i, (box, spacing) in enumerate(zip(boxes, spacings, strict=True)):
        if prior is not None and spacing is not None:
            to_mm = lambda p, box=box, spacing=spacing: box.to_original(p) * spacing
            coords[i] = shape_consistent_decode(logs[i : i + 1], codec, prior, to_mm)[0][0]
            how.append("shape-consistent")
        else:
            how.append("arg-max")
    orig = np.stack([box.to_original(c) for box, c in zip(boxes, coords, strict=True)])
    return orig, np.exp(peak), how


def resolve_spacing(xray: XRay, override_mm: float | None) -> tuple[float | None, str | None]:
    """An explicit ``--pixel-spacing`` wins over the file's own; None when neither says."""
    if override_mm is not None:
        if not (override_mm > 0 and math.isfinite(override_mm)):
            raise ValueError(f"--pixel-spacing: must be a positive number of mm, got {override_mm}")
        return float(override_mm), "--pixel-spacing"
    return xray.spacing_mm, xray.spacing_source


def predict_xrays(
    backend,
    xrays: Sequence[XRay],
    pixel_spacing_mm: float | None = None,
    prior: ShapePrior | None = None,
    refiner=None,
) -> list[Prediction]:
    """Landmarks of a batch of X-rays. ``refiner``: a :class:`Refinement` (PyTorch), applied
    to the images whose pixel spacing is known."""
    card = backend.card
    images, boxes = letterbox_batch(xrays, card.input_size)
    spacing = [resolve_spacing(x, pixel_spacing_mm) for x in xrays]
    logs = backend(images)
    coords, peak, how = decode_batch(logs, card.codec(), boxes, [s for s, _ in spacing], prior)
    conf = peak / ideal_peak(card.sigma)
    out = [
        Prediction(x, s, src, c, p, h)
        for x, (s, src), c, p, h in zip(xrays, spacing, coords, conf, how, strict=True)
    ]
    if refiner is not None:
        for p in out:
            if p.spacing_mm is not None:
                refiner(p)
    return out


class Refinement:
    """A refiner checkpoint applied to one :class:`Prediction` in place (PyTorch)."""

    def __init__(self, path: str | Path, device: str = "auto"):
        from mahtnet.inference import select_device
        from mahtnet.refine_train import load_refiner

        self.model, self.meta = load_refiner(path)
        self.device = select_device(device)
        self.model.to(self.device)

    def __call__(self, p: Prediction) -> None:
        from mahtnet.refine import fine_from_images, patch_codec, refine_points

        size, sigma = self.meta["patch_size"], self.meta["sigma"]
        fine = fine_from_images(
            [p.xray.pixels], [p.spacing_mm], self.meta["spacing_mm"], np.zeros_like(p.landmarks)[None]
        )
        pts, _ = refine_points(
            self.model, fine, p.landmarks[None], size, patch_codec(size, sigma), self.device
        )
        p.landmarks, p.decoding = pts[0], "refined"  # the confidence stays the coarse model's


def measurement_report(landmarks: np.ndarray, spacing_mm: float | None) -> dict[str, dict]:
    """The ISBI task-2 measurements with their classes. Angles and FHI need no spacing; MW
    (mm) is null without it."""
    values = clinical.measurements(landmarks, 1.0 if spacing_mm is None else spacing_mm)
    classes = clinical.classify(values)
    out = {}
    for name in clinical.MEASUREMENTS:
        if name == "MW" and spacing_mm is None:
            out[name] = {"value": None, "unit": "mm", "class": None, "meaning": None}
            continue
        c = int(classes[name][0])
        unit = {"FHI": "ratio", "MW": "mm"}.get(name, "deg")
        out[name] = {
            "value": float(values[name][0]),
            "unit": unit,
            "class": c,
            "meaning": clinical.CLASS_MEANINGS[name][c],
        }
    return out


def to_json(
    p: Prediction, card: ModelCard, threshold: float = LOW_CONFIDENCE, calibration=None
) -> dict[str, Any]:
    """The per-image result document (``<name>.json``); with an
    :class:`~mahtnet.calibration.ErrorCalibration`, each landmark's expected error (mm)."""
    h, w = p.xray.pixels.shape
    rows = []
    expected = None if calibration is None else calibration.expected_error(p.confidence)
    for k, (name, (x, y), c) in enumerate(zip(card.landmark_names, p.landmarks, p.confidence, strict=True)):
        mm = None if p.spacing_mm is None else (float(x * p.spacing_mm), float(y * p.spacing_mm))
        rows.append(
            {
                "name": name,
                "x_px": float(x),
                "y_px": float(y),
                "x_mm": None if mm is None else mm[0],
                "y_mm": None if mm is None else mm[1],
                "confidence": float(c),
                "low_confidence": bool(c < threshold),
                **({} if expected is None else {"expected_error_mm": float(expected[k])}),
            }
        )
    return {
        "image": str(p.xray.path),
        "width_px": int(w),
        "height_px": int(h),
        "pixel_spacing_mm": p.spacing_mm,
        "pixel_spacing_source": p.spacing_source,
        "decoding": p.decoding,
        "low_confidence_threshold": threshold,
        "landmarks": rows,
        "measurements": measurement_report(p.landmarks, p.spacing_mm),
        "model": card.to_dict(),
    }


def isbi_text(p: Prediction) -> str:
    """The ISBI 2015 annotation format: 19 lines ``x,y`` (integer original px)."""
    return "".join(f"{round(x)},{round(y)}\n" for x, y in p.landmarks)
