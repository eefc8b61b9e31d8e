"""Typed view of ``params.yaml``.

``params.yaml`` is the one place where defaults live: the dataclasses below have no
default values, so a missing key is an error, and an unknown key is an error that
names the key and lists the valid ones. Each key maps to one keyword argument of
the library function that uses it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ParamsError(ValueError):
    """A ``params.yaml`` problem; the message names the offending key."""


@dataclasses.dataclass(frozen=True)
class DataParams:
    dataset: str  # "synthetic" or "isbi2015": which loader reads ``root``
    root: str  # dataset root in the ISBI 2015 layout (relative to the repo root or absolute)
    gt: str  # "mean", "senior" or "junior"
    train_split: str  # e.g. "TrainingData"
    test_split: str  # e.g. "Test1Data"
    val_fraction: float  # share of the training images held out for model selection


@dataclasses.dataclass(frozen=True)
class SyntheticParams:
    seed: int
    n_train: int
    n_test: int
    width: int
    height: int
    pixel_spacing_mm: float
    annotator_sd_mm: float
    pose_rotation_deg: float
    pose_scale: float
    pose_shift_mm: float


@dataclasses.dataclass(frozen=True)
class PreprocessParams:
    height: int  # network input height (px)
    width: int  # network input width (px)


@dataclasses.dataclass(frozen=True)
class HeatmapParams:
    sigma: float  # Gaussian sd in heatmap pixels
    stride: int  # input pixels per heatmap pixel (1 = full input resolution)


@dataclasses.dataclass(frozen=True)
class ModelParams:
    name: str  # "unet" or "maht_net"
    unet_channels: int  # width of the first U-Net block; doubles at each level
    unet_depth: int  # number of down blocks
    # MAHT-Net (each key is the MAHTNet keyword argument of the same name)
    encoder: str  # timm backbone: see mahtnet.models.encoder.ENCODERS
    encoder_weights: str | None  # local timm-keyed state dict file; null = random init (no downloads)
    encoder_frozen_stages: int  # 0 = train all; n = freeze the stem and the first n of 4 stages
    encoder_grad_checkpointing: bool  # recompute encoder activations in backward (less memory)
    transformer_layers: int  # transformer blocks in the bottleneck; 0 = no transformer
    transformer_dim: int  # token width
    transformer_heads: int  # attention heads (must divide transformer_dim)
    transformer_mlp_ratio: float  # MLP hidden width / transformer_dim
    attention_window: int  # 0 = global attention; n = local attention in n x n token windows
    transformer_pos_size: int  # side of the learnable positional-embedding grid (interpolated)
    decoder_channels: int  # common decoder width at strides 4-32 (halved per upsampling below 4)
    attention_gates: bool  # attention gates on the decoder's skip connections
    decoder_cbam: bool  # channel + spatial (CBAM) attention after each decoder fusion
    fpn: bool  # FPN additive lateral fusion (true) or U-Net concatenation (false)
    output_stride: int  # input px per heatmap px of MAHT-Net: 1 or 2 (must equal heatmap.stride)
    head_temperature: float  # soft-argmax temperature of the coordinate head


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    p_affine: float
    rotate_deg: float
    scale: float  # +/- relative zoom
    translate: float  # +/- fraction of the image size
    p_brightness_contrast: float
    brightness: float
    contrast: float
    p_noise: float
    noise_std: float  # fraction of the intensity range


@dataclasses.dataclass(frozen=True)
class TrainParams:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: int
    loss: str  # "softmax_ce" or "mse"
    mse_target_scale: float  # peak value of the MSE targets (unit peaks stall training)
    grad_clip: float  # max global gradient norm; 0 disables
    patience: int  # early stopping: epochs without validation-MRE improvement
    min_delta_mm: float  # smallest improvement of validation MRE that counts
    device: str  # "auto", "cpu" or "cuda"
    amp: bool  # mixed precision on CUDA
    num_workers: int
    threads: int  # torch CPU threads; 0 = torch default
    augment: AugmentParams


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    sdr_thresholds_mm: list[float]
    batch_size: int


@dataclasses.dataclass(frozen=True)
class TrackingParams:
    experiment: str  # MLflow experiment name
    uri: str | None  # MLflow tracking URI; null = sqlite file at the repo root


@dataclasses.dataclass(frozen=True)
class Params:
    seed: int
    data: DataParams
    synthetic: SyntheticParams
    preprocess: PreprocessParams
    heatmap: HeatmapParams
    model: ModelParams
    train: TrainParams
    evaluate: EvaluateParams
    tracking: TrackingParams


def _check_scalar(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        tp = next(t for t in options if t is not type(None))
        origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"params key '{key}' must be a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_check_scalar(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"params key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"params key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"params key '{key}' must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ParamsError(f"params key '{key}' must be finite, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"params key '{key}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported params type {tp} for '{key}'")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix or "params"
    if not isinstance(raw, dict):
        raise ParamsError(f"'{where}' must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ParamsError(
            f"unknown params key '{prefix + unknown[0]}' (valid keys in '{where}': {', '.join(names)})"
        )
    missing = [n for n in names if n not in raw]
    if missing:
        raise ParamsError(f"missing params key '{prefix + missing[0]}'")
    values = {}
    for name in names:
        tp = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, raw[name], key + ".")
        else:
            values[name] = _check_scalar(raw[name], tp, key)
    return cls(**values)


def parse_params(raw: dict) -> Params:
    """Validate a parsed ``params.yaml`` mapping and return typed params."""
    params = _build(Params, raw, "")
    _check_choices(params)
    return params


def _check_choices(p: Params) -> None:
    choices = {
        "data.dataset": (p.data.dataset, ("synthetic", "isbi2015")),
        "data.gt": (p.data.gt, ("mean", "senior", "junior")),
        "train.loss": (p.train.loss, ("softmax_ce", "mse")),
        "train.device": (p.train.device, ("auto", "cpu", "cuda")),
    }
    for key, (value, valid) in choices.items():
        if value not in valid:
            raise ParamsError(f"params key '{key}' is {value!r}; valid: {', '.join(valid)}")
    if not 0.0 < p.data.val_fraction < 1.0:
        raise ParamsError("params key 'data.val_fraction' must be in (0, 1): model selection needs it")
    multiple = 32 if p.model.name == "maht_net" else 16  # the models' coarsest strides
    for key in ("preprocess.height", "preprocess.width"):
        section, name = key.split(".")
        value = getattr(getattr(p, section), name)
        if value <= 0 or value % multiple:
            raise ParamsError(
                f"params key '{key}' must be a positive multiple of {multiple} "
                f"for model.name {p.model.name!r}, got {value}"
            )
    if p.model.output_stride not in (1, 2):
        raise ParamsError(f"params key 'model.output_stride' must be 1 or 2, got {p.model.output_stride}")
    if p.model.name == "maht_net" and p.heatmap.stride != p.model.output_stride:
        raise ParamsError(
            f"params key 'heatmap.stride' ({p.heatmap.stride}) must equal 'model.output_stride' "
            f"({p.model.output_stride}): the targets must have the model's output size"
        )
    if p.model.name == "unet" and p.heatmap.stride != 1:
        raise ParamsError(
            f"params key 'heatmap.stride' is {p.heatmap.stride} but model.name 'unet' predicts at "
            "stride 1 ('model.output_stride' applies to maht_net only)"
        )


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    with path.open() as f:
        raw = yaml.safe_load(f)
    try:
        return parse_params(raw or {})
    except ParamsError as err:
        raise ParamsError(f"{path}: {err}") from None


def to_dict(params: Any) -> dict:
    """Params (or a section) as a plain nested dict, e.g. for a checkpoint or MLflow."""
    return dataclasses.asdict(params)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
