"""Post-training static INT8 quantisation of an exported ONNX model (onnxruntime).

QDQ format, int8 weights (per output channel) and uint8 activations whose ranges come from
calibration images: *training* images through the real preprocessing, never test images.
The op types in ``quantize.op_types`` are quantised except the nodes whose names contain one of
``quantize.exclude`` (kept in float). The model card (ONNX metadata) is carried over, so
``mahtnet predict --model X.int8.onnx`` works like with the float file.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from mahtnet.config import ParamsError, QuantizeParams
from mahtnet.decoding.backends import network_input
from mahtnet.io import atomic_write

METHODS = ("minmax", "percentile", "entropy")


class CalibrationImages:
    """onnxruntime ``CalibrationDataReader``: one prepared uint8 image ``(H, W)`` per call as
    ``{input_name: (1, 1, H, W) float32 in [0, 1]}``."""

    def __init__(self, images: np.ndarray, input_name: str = "images"):
        self._images = iter(images)
        self.input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._images, None)
        if image is None:
            return None
        return {self.input_name: network_input(image[None])}


def excluded_nodes(model: onnx.ModelProto, q: QuantizeParams) -> list[str]:
    """Names of the nodes of the quantised op types that stay float."""
    return [
        n.name
        for n in model.graph.node
        if n.op_type in q.op_types and any(pat in n.name for pat in q.exclude)
    ]


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    if name not in METHODS:
        raise ParamsError(f"params key 'quantize.calibrate_method': {name!r}; valid: {', '.join(METHODS)}")
    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}.get(
        name, CalibrationMethod.Entropy
    )


def quantize_int8(fp32: str | Path, out: str | Path, calibration: np.ndarray, q: QuantizeParams) -> Path:
    """Write the INT8 (QDQ) version of the ONNX file ``fp32`` to ``out`` (atomically);
    ``calibration``: prepared training images ``(N, H, W)`` uint8."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ValueError("quantize: no calibration images")
    source = onnx.load(str(fp32))
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        excluded = excluded_nodes(onnx.load(str(pre)), q)

        def write(path: Path) -> None:
            # reduce_range: 7-bit weights (u8 x s8 saturates on AVX2 CPUs without VNNI)
            quantize_static(
                str(pre), str(path), CalibrationImages(calibration, source.graph.input[0].name),
                quant_format=QuantFormat.QDQ, per_channel=q.per_channel, weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8, calibrate_method=_method(q.calibrate_method),
                op_types_to_quantize=list(q.op_types), nodes_to_exclude=excluded, reduce_range=True,
            )  # fmt: skip
            quantized = onnx.load(str(path))
            del quantized.metadata_props[:]
            quantized.metadata_props.extend(source.metadata_props)  # the model card
            onnx.save(quantized, str(path))

        return atomic_write(out, write)
