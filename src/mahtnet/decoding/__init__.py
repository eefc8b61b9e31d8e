"""Reading landmarks from a trained model: backends (PyTorch or onnxruntime), shape-consistent
decoding, test-time augmentation and refinement, behind one :class:`LandmarkReader`."""

from mahtnet.decoding.backends import (
    OnnxBackend,
    OnnxRefiner,
    TorchBackend,
    TorchRefiner,
    load_backend,
    load_refiner,
)
from mahtnet.decoding.reader import VARIANTS, LandmarkReader, Readout, ideal_peak

__all__ = [
    "VARIANTS",
    "LandmarkReader",
    "OnnxBackend",
    "OnnxRefiner",
    "Readout",
    "TorchBackend",
    "TorchRefiner",
    "ideal_peak",
    "load_backend",
    "load_refiner",
]
