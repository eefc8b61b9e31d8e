"""Model backends: a trained network as a NumPy function, on PyTorch or onnxruntime alike.

A **coarse backend** maps letterboxed network inputs ``(B, H, W)`` uint8 to log-heatmaps
``(B, K, h, w)``; a **refiner backend** maps patches ``(B, P, P)`` uint8 and the landmark each
patch is for ``(B,)`` to that landmark's log-probability map ``(B, P, P)`` (a log-softmax over
the patch). Each has a :class:`~mahtnet.models.card.ModelCard` (``card``) and the codec of its maps
(``codec``). :class:`OnnxBackend` and :class:`OnnxRefiner` need onnxruntime only (PyTorch is
not imported); :class:`TorchBackend` and :class:`TorchRefiner` run a checkpoint, or a network
in memory (:meth:`TorchBackend.from_module`, as training's validation does).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mahtnet.codec import HeatmapCodec
from mahtnet.data.images import DataError
from mahtnet.models.card import CheckpointCard, ModelCard

ONNX_META_KEY = "mahtnet"


def network_input(images: np.ndarray) -> np.ndarray:
    """uint8 images ``(B, H, W)`` -> the network input ``(B, 1, H, W)`` float32 in [0, 1]
    (NumPy's twin of :func:`mahtnet.data.dataset.image_to_tensor`, bit-equal)."""
    return (np.ascontiguousarray(images, dtype=np.float32) / np.float32(255.0))[:, None]


def onnx_providers(device: str) -> list[str]:
    """onnxruntime execution providers for ``device`` (auto: CUDA when onnxruntime has it)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise RuntimeError(f"--device cuda: onnxruntime has no CUDA provider (has {available})")
    return ["CPUExecutionProvider"]


class _OnnxModel:
    """An exported ``.onnx`` file on onnxruntime with its card (``threads``: intra-op threads,
    0 = default); ``kind``: the card kind the file must hold."""

    kind = "coarse"

    def __init__(self, path: str | Path, threads: int = 0, device: str = "cpu"):
        import onnxruntime as ort

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
        if self.card.kind != self.kind:
            raise DataError(f"{path}: a {self.card.kind} model, not a {self.kind} model")
        self.codec = self.card.codec()
        self.input_names = [i.name for i in self.session.get_inputs()]


class OnnxBackend(_OnnxModel):
    """A coarse model exported to ONNX."""

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_names[0]: network_input(images)})[0]


class OnnxRefiner(_OnnxModel):
    """A refiner exported to ONNX (inputs ``patches``, ``landmark``)."""

    kind = "refiner"

    def __call__(self, patches: np.ndarray, landmark: np.ndarray) -> np.ndarray:
        feed = dict(
            zip(self.input_names, (network_input(patches), np.asarray(landmark, np.int64)), strict=True)
        )
        return self.session.run(None, feed)[0]


class TorchBackend:
    """A coarse checkpoint on PyTorch (or, :meth:`from_module`, a network in memory)."""

    def __init__(self, path: str | Path, device: str = "auto"):
        from mahtnet.models.checkpoint import load_checkpoint, model_from_checkpoint

        payload = load_checkpoint(path)
        model, codec, output_kind = model_from_checkpoint(payload)
        card = ModelCard.from_meta(path, "pytorch", CheckpointCard.of(payload["meta"]).deployed())
        self._init(model.eval(), output_kind, codec, card, device)

    @classmethod
    def from_module(cls, model, output_kind: str, codec: HeatmapCodec, device="cpu", autocast=None):
        """A network in memory (no card); ``autocast``: a context factory for its forward pass."""
        self = cls.__new__(cls)
        self._init(model, output_kind, codec, None, device, autocast)
        return self

    def _init(self, model, output_kind, codec, card, device, autocast=None) -> None:
        import contextlib

        import torch

        from mahtnet.data.dataset import image_to_tensor
        from mahtnet.models.device import select_device
        from mahtnet.models.readout import HeatmapNet

        self.device = device if isinstance(device, torch.device) else select_device(device)
        self.net = HeatmapNet(model, output_kind).to(self.device).train(model.training)
        self.card, self.codec = card, codec
        self._torch, self._to_tensor = torch, image_to_tensor  # imported here: not on the ONNX path
        self._autocast = autocast or contextlib.nullcontext

    def __call__(self, images: np.ndarray) -> np.ndarray:
        was_training = self.net.training
        self.net.eval()
        try:
            with self._torch.no_grad(), self._autocast():
                return self.net(self._to_tensor(images).to(self.device)).float().cpu().numpy()
        finally:
            self.net.train(was_training)


class TorchRefiner:
    """A refiner checkpoint on PyTorch (or, :meth:`from_module`, one in memory)."""

    def __init__(self, path: str | Path, device: str = "auto"):
        from mahtnet.models.checkpoint import CheckpointError, load_checkpoint
        from mahtnet.models.factory import build_refiner

        payload = load_checkpoint(path)
        meta = CheckpointCard.of(payload["meta"])
        if meta.kind != "refiner":
            raise CheckpointError(f"{path} is not a refiner checkpoint (train_refine writes those)")
        model = build_refiner(len(meta.landmark_names), meta.model["channels"], meta.model["depth"])
        model.load_state_dict(payload["model_state"])
        self._init(model.eval(), ModelCard.from_meta(path, "pytorch", meta.deployed()), device)

    @classmethod
    def from_module(cls, model, card: ModelCard, device="cpu") -> TorchRefiner:
        self = cls.__new__(cls)
        self._init(model, card, device)
        return self

    def _init(self, model, card: ModelCard, device) -> None:
        import torch

        from mahtnet.models.device import select_device
        from mahtnet.models.readout import RefinerNet

        self.device = device if isinstance(device, torch.device) else select_device(device)
        self.net = RefinerNet(model).to(self.device).train(model.training)
        self.card, self.codec = card, card.codec()
        self._torch = torch

    def __call__(self, patches: np.ndarray, landmark: np.ndarray) -> np.ndarray:
        torch = self._torch
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                x = torch.from_numpy(network_input(patches)).to(self.device)
                index = torch.as_tensor(np.asarray(landmark, np.int64), device=self.device)
                return self.net(x, index).float().cpu().numpy()
        finally:
            self.net.train(was_training)


def load_backend(path: str | Path, device: str = "auto", threads: int = 0) -> OnnxBackend | TorchBackend:
    """The coarse backend for a model file: ``.onnx`` -> onnxruntime, anything else a checkpoint."""
    if Path(path).suffix.lower() == ".onnx":
        return OnnxBackend(path, threads, device)
    return TorchBackend(path, device)


def load_refiner(path: str | Path, device: str = "auto", threads: int = 0) -> OnnxRefiner | TorchRefiner:
    """The refiner backend for a file: ``.onnx`` -> onnxruntime, anything else a checkpoint."""
    if Path(path).suffix.lower() == ".onnx":
        return OnnxRefiner(path, threads, device)
    return TorchRefiner(path, device)
