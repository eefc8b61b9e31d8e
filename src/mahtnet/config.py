"""Typed view of ``params.yaml``.

``params.yaml`` is the one place where defaults live: the dataclasses below have no
default values, so a missing key is an error, and an unknown key is an error that
names the key and lists the valid ones. Each key maps to one keyword argument of
the library function that uses it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


class ParamsError(ValueError):
    """A ``params.yaml`` problem; the message names the offending key."""


@dataclasses.dataclass(frozen=True)
class DataParams:
    dataset: str  # "synthetic" or "isbi2015": which loader reads ``root``
    root: str  # dataset root in the ISBI 2015 layout (relative to the repo root or absolute)
    gt: str  # training labels: "mean", "senior", "junior", "challenge" or "doctors" (isbi.LABELS)
    train_split: str  # e.g. "TrainingData"
    test_split: str  # e.g. "Test1Data": the test split of every downstream stage
    extra_test_splits: list[str]  # further test splits, only evaluated (ISBI: ["Test2Data"])
    val_fraction: float  # share of the training images held out for model selection
    # which images are held out: the seed of that draw; None = the run's ``seed`` (a fixed value
    # keeps one validation split across seeds, e.g. for the members of an ensemble)
    split_seed: int | None = None


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
    sigma: float  # Gaussian sd in heatmap pixels (each model's own output stride sets their size)
    sigma_start: float | None  # curriculum: training targets start at this sigma; null = fixed sigma
    anneal_fraction: float  # share of each stage's epochs over which sigma goes from sigma_start to sigma


@dataclasses.dataclass(frozen=True)
class ModelParams:
    """Architecture of both models: the U-Net baseline's two keys and MAHT-Net's keys (which
    model a stage builds is the stage's choice: ``train_baseline`` the U-Net, the three
    ``train_stage*`` stages MAHT-Net)."""

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
    output_stride: int  # input px per heatmap px of MAHT-Net: 1 or 2 (the U-Net's is 1)
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
class AutoBatchParams:
    """``train.batch_size: auto``: the batch kept and the share of free memory left unused."""

    target: int  # the batch (per process) whose gradient each step sums, split into micro-batches
    margin: float  # share of the device's free memory kept free, in [0, 1)


@dataclasses.dataclass(frozen=True)
class TrainParams:
    """Settings shared by every training stage (baseline, stage1-3)."""

    batch_size: int | str  # per process (per GPU under torchrun), or "auto" (see auto_batch)
    auto_batch: AutoBatchParams
    accumulate_steps: int  # gradient accumulation: one optimizer step every n batches
    weight_decay: float
    grad_clip: float  # max global gradient norm; 0 disables
    device: str  # "auto", "cpu" or "cuda"
    amp: bool  # fp16 autocast + gradient scaling on CUDA
    cpu_bf16: bool  # bf16 autocast on CPU (off: fp32, bit-reproducible)
    num_workers: int
    threads: int  # torch CPU threads; 0 = torch default
    augment: AugmentParams


@dataclasses.dataclass(frozen=True)
class LossParams:
    """How the loss terms are computed; their weights are per training stage."""

    output: str  # "logits" (spatial-softmax heatmaps) or "heatmap" (direct Gaussian regression)
    mse_target_scale: float  # output "heatmap": the network regresses Gaussians of this peak
    wing_width: float  # Wing loss w (input px)
    wing_curvature: float  # Wing loss epsilon (input px)
    adaptive_wing_omega: float
    adaptive_wing_theta: float
    adaptive_wing_epsilon: float
    adaptive_wing_alpha: float
    focal_alpha: float
    focal_beta: float
    ssim_window: int


@dataclasses.dataclass(frozen=True)
class LossWeights:
    softmax_ce: float  # KL between the spatial softmax and the normalised target
    mse: float  # heatmap MSE
    l1_coords: float  # L1 on soft-argmax coordinates
    wing: float  # Wing loss on soft-argmax coordinates
    adaptive_wing: float  # adaptive Wing loss on heatmaps
    ssim: float  # 1 - SSIM of the heatmaps
    focal: float  # focal heatmap loss


@dataclasses.dataclass(frozen=True)
class EarlyStoppingParams:
    """Each criterion with patience > 0 is watched; ``mode`` all: stop when every watched
    criterion has gone ``patience`` epochs without improving by ``min_delta``; any: when one has."""

    mode: str  # "all" or "any"
    mre_patience: int  # validation MRE (mm)
    mre_min_delta_mm: float
    sdr2_patience: int  # validation SDR at 2 mm (%)
    sdr2_min_delta: float
    loss_patience: int  # validation loss
    loss_min_delta: float


@dataclasses.dataclass(frozen=True)
class StageParams:
    """One training stage: schedule, loss weights, early stopping, checkpoint averaging."""

    epochs: int | None  # distill.train's null: the baseline's budget (the baseline's: not for training)
    lr: float  # decoder + head (the U-Net's up path and head)
    encoder_lr: float  # encoder (the U-Net's down path); 0 = frozen (BatchNorm in eval)
    transformer_lr: float  # transformer bottleneck; 0 = frozen
    bypass_transformer: bool  # skip the transformer blocks (stage 1)
    scheduler: str  # "cosine" (linear warm-up, cosine decay per step) or "plateau" (on val MRE)
    warmup_epochs: int
    plateau_factor: float
    plateau_patience: int
    loss_weights: LossWeights
    uncertainty_weighting: bool  # learned (Kendall et al. 2018) weighting of the active terms
    select: str  # best checkpoint by "val_mre_mm", "val_sdr_2mm" or "val_loss"
    early_stopping: EarlyStoppingParams
    average: str  # checkpoint averaging: "none", "last" or "best" (k per-epoch weights)
    average_k: int


@dataclasses.dataclass(frozen=True)
class RefineParams:
    """The coarse-to-fine refinement network (a small U-Net on patches around each coarse
    landmark at ``spacing_mm``) and its training schedule (``train``, a stage block)."""

    spacing_mm: float  # fine image resolution, mm per px (never finer than the original)
    patch_size: int  # patch side in fine px (a multiple of 2**depth)
    sigma: float  # Gaussian sd of the patch heatmap targets, fine px
    channels: int  # U-Net width of the first block
    depth: int  # U-Net down blocks
    jitter_scale: float  # training patch centres: gt + N(0, (scale * coarse val RMS error)^2) per axis
    jitter_floor_mm: float  # smallest jitter sd (mm)
    batch_size: int  # patches per batch
    rotate_deg: float  # geometric augmentation of the patches about their centre (0 = off)
    zoom: float  # zoom factor U(1 - zoom, 1 + zoom)
    brightness: float  # intensity augmentation of the patches (0 = off)
    contrast: float
    train: StageParams  # schedule; the refiner's down path is the "encoder", the rest "decoder"/"head"


@dataclasses.dataclass(frozen=True)
class DistillParams:
    """Knowledge distillation (stages ``student`` and ``distill``): a U-Net of
    ``student_channels`` trained without and with the teacher's heatmaps as soft targets."""

    student_channels: int  # the student U-Net's first-block width (the baseline's is model.unet_channels)
    weight: float  # loss = (1 - weight) * ground-truth loss + weight * T^2 * KL(teacher || student)
    temperature: float  # T: both spatial softmaxes are taken of logits / T
    train: StageParams  # the students' schedule (both); epochs null = the baseline's budget


@dataclasses.dataclass(frozen=True)
class PruneParams:
    """Structured (channel) pruning of the full MAHT-Net (stages ``train_prune@<sparsity>``):
    torch-pruning removes the least important channel groups, then ``train`` fine-tunes."""

    sparsities_pct: list[int]  # channel sparsities tried, % of each prunable layer's output channels
    importance: str  # l1 | l2: norm of each coupled channel group's weights (torch-pruning)
    round_to: int  # kept channels a multiple of this (SIMD-friendly widths)
    ignore: list[str]  # module-name prefixes whose output channels are kept
    train: StageParams  # the fine-tuning schedule after pruning (a stage block like stage 3)


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    sdr_thresholds_mm: list[float]
    batch_size: int
    shape_decode: bool  # choose among the top heatmap peaks with a shape model of the training annotations
    shape_candidates: int  # peaks kept per landmark
    tta_shifts_px: list[float]  # test-time augmentation: +/- shifts (network px); [] and [] = off
    tta_scales: list[float]  # test-time zooms, e.g. [0.95, 1.05]


@dataclasses.dataclass(frozen=True)
class CompareParams:
    alpha: float  # significance level (Wilcoxon, Holm-corrected per-landmark tests, CIs)
    bootstrap_samples: int  # image resamples for the 95 % confidence intervals


@dataclasses.dataclass(frozen=True)
class CrossvalParams:
    folds: int  # k of k-fold cross-validation over the training images
    models: list[str]  # which to cross-validate: "baseline" and/or "maht_net" (three stages)


@dataclasses.dataclass(frozen=True)
class RobustnessParams:
    """Perturbations of the original test images (stage robustness): severities of each."""

    noise_sd: list[float]  # Gaussian noise sd, grey levels of 255
    gamma: list[float]  # output = input ** gamma (on [0, 1])
    contrast: list[float]  # factor about the image mean
    blur_mm: list[float]  # Gaussian blur sd in mm
    jpeg_quality: list[int]  # JPEG re-compression quality (1-100)
    rotate_deg: list[float]  # rotation about the image centre
    scale: list[float]  # zoom about the image centre (the pixel spacing follows)
    crop_fraction: list[float]  # share of the height / width cut off every border (< 0.5)
    seed: int  # noise generator seed


@dataclasses.dataclass(frozen=True)
class TrackingParams:
    experiment: str  # MLflow experiment name
    uri: str | None  # MLflow tracking URI; null = sqlite file at the repo root
    log_models: bool  # training stages log their network as an MLflow model (mahtnet.deploy.mlflow_models)
    tags: dict = dataclasses.field(
        default_factory=dict
    )  # extra tags on every run (a study's: scripts/ablations.py)


@dataclasses.dataclass(frozen=True)
class QuantizeParams:
    calibration_images: int  # training images (real preprocessing) the activation ranges come from
    calibrate_method: str  # minmax | percentile | entropy (onnxruntime CalibrationMethod)
    per_channel: bool  # per-output-channel weight scales
    op_types: list[str]  # ONNX op types quantised (Conv, MatMul)
    exclude: list[str]  # node-name substrings kept in float (chosen on validation images)


@dataclasses.dataclass(frozen=True)
class OptimiseParams:
    """The size / speed / accuracy trade-off table (stage optimise)."""

    peak_memory: bool  # each variant's peak RSS, measured in fresh processes (two per variant)


@dataclasses.dataclass(frozen=True)
class SearchParams:
    """Hyper-parameter and architecture search with Optuna (``search/dvc.yaml``,
    :mod:`mahtnet.training.search`): each trial trains ``stage`` for ``epochs`` on the training images
    and is scored on validation images only (never the test split)."""

    study: str  # Optuna study name (workers with the same name and storage cooperate)
    storage: str | None  # SQLAlchemy URL of the study; null = sqlite:///<repo>/data/search/optuna.db
    trials: int  # complete + pruned trials of the study, all workers together
    stage: str  # the schedule and model a trial trains: stage1 (MAHT-Net) | baseline (U-Net)
    epochs: int  # epochs of a trial (its stage's epochs)
    objective: str  # val: best validation MRE | crossval: mean over crossval.folds folds
    sampler: str  # tpe | random | grid (every space key a list of choices)
    pruner: str  # median | hyperband | none: stops trials whose validation MRE lags
    startup_trials: int  # trials before TPE models the space and the pruner prunes
    warmup_epochs: int  # epochs of a trial before it can be pruned
    seed: int  # sampler seed
    fixed: list[str]  # "key=value" settings of every trial, e.g. stage1.bypass_transformer=false
    space: dict  # {params key: {low, high[, log, step]} or {choices: [...]}}


@dataclasses.dataclass(frozen=True)
class SearchDim:
    """One dimension of ``search.space``: a numeric range (``low``..``high``, ``log`` scale, an
    integer range when both ends are integers, ``step``) or categorical ``choices``."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    choices: tuple | None = None


def parse_space(space: dict, known: Sequence[str]) -> list[SearchDim]:
    """The dimensions of ``search.space``; an unknown params key or a bad range raises a
    :class:`ParamsError` naming ``search.space.<key>``."""
    dims = []
    for key, spec in space.items():
        where = f"search.space.{key}"
        if key not in known:
            raise ParamsError(f"params key '{where}': '{key}' is not a params key")
        if not isinstance(spec, dict) or not (set(spec) <= {"low", "high", "log", "step", "choices"}):
            raise ParamsError(
                f"params key '{where}' must be {{low, high[, log, step]}} or {{choices: [...]}}"
            )
        if "choices" in spec:
            if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
                raise ParamsError(f"params key '{where}.choices' must be a non-empty list (and alone)")
            dims.append(SearchDim(key, choices=tuple(spec["choices"])))
            continue
        low, high, log = spec.get("low"), spec.get("high"), spec.get("log", False)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
        bad_log = not isinstance(log, bool) or (log and (low <= 0 or spec.get("step") is not None))
        if not numbers or not low < high or bad_log:
            raise ParamsError(
                f"params key '{where}' needs numbers low < high (log: low > 0, no step), got {spec}"
            )
        integer = isinstance(low, int) and isinstance(high, int)
        dims.append(SearchDim(key, float(low), float(high), log, spec.get("step"), integer))
    return dims


@dataclasses.dataclass(frozen=True)
class Params:
    seed: int
    data: DataParams
    synthetic: SyntheticParams
    preprocess: PreprocessParams
    heatmap: HeatmapParams
    model: ModelParams
    train: TrainParams
    loss: LossParams
    baseline: StageParams
    stage1: StageParams
    stage2: StageParams
    stage3: StageParams
    refine: RefineParams
    distill: DistillParams
    prune: PruneParams
    evaluate: EvaluateParams
    compare: CompareParams
    crossval: CrossvalParams
    quantize: QuantizeParams
    optimise: OptimiseParams
    search: SearchParams
    robustness: RobustnessParams
    tracking: TrackingParams


def _check_scalar(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        types_ = [t for t in options if t is not type(None)]
        if len(types_) > 1:  # e.g. int | str: the first type that accepts the value
            for option in types_:
                with contextlib.suppress(ParamsError):
                    return _check_scalar(value, option, key)
            names = " or ".join(getattr(t, "__name__", str(t)) for t in types_)
            raise ParamsError(f"params key '{key}' must be {names}, got {value!r}")
        tp = types_[0]
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
    if tp is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"params key '{key}' must be a mapping, got {value!r}")
        return value
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
    optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
                or f.default_factory is not dataclasses.MISSING}  # fmt: skip
    missing = [n for n in names if n not in raw and n not in optional]
    if missing:
        raise ParamsError(f"missing params key '{prefix + missing[0]}'")
    values = {}
    for name in (n for n in names if n in raw):
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


STAGES = (
    "baseline",
    "stage1",
    "stage2",
    "stage3",
)  # the schedule's own blocks (the kinds: mahtnet.training.kinds)


def _choice(key: str, value: Any, valid: tuple) -> None:
    if value not in valid:
        raise ParamsError(f"params key '{key}' is {value!r}; valid: {', '.join(map(str, valid))}")


def _check_choices(p: Params) -> None:
    _choice("data.dataset", p.data.dataset, ("synthetic", "isbi2015"))
    _choice("data.gt", p.data.gt, ("mean", "senior", "junior", "challenge", "doctors"))
    _choice("train.device", p.train.device, ("auto", "cpu", "cuda"))
    _choice("loss.output", p.loss.output, ("logits", "heatmap"))
    if p.heatmap.sigma_start is not None and p.heatmap.sigma_start <= 0:
        raise ParamsError(
            f"params key 'heatmap.sigma_start' must be > 0 or null, got {p.heatmap.sigma_start}"
        )
    if not 0.0 < p.heatmap.anneal_fraction <= 1.0:
        raise ParamsError(
            f"params key 'heatmap.anneal_fraction' must be in (0, 1], got {p.heatmap.anneal_fraction}"
        )
    if not 0.0 < p.compare.alpha < 1.0:
        raise ParamsError(f"params key 'compare.alpha' must be in (0, 1), got {p.compare.alpha}")
    if p.crossval.folds < 2:
        raise ParamsError(f"params key 'crossval.folds' must be >= 2, got {p.crossval.folds}")
    for i, model in enumerate(p.crossval.models):
        _choice(f"crossval.models[{i}]", model, ("baseline", "maht_net"))
    if not 0.0 < p.data.val_fraction < 1.0:
        raise ParamsError("params key 'data.val_fraction' must be in (0, 1): model selection needs it")
    _check_train(p.train)
    for stage in STAGES:
        _check_stage(getattr(p, stage), stage, p.loss.output)
    _check_refine(p.refine)
    _check_stage(p.distill.train, "distill.train", p.loss.output)
    if p.distill.student_channels < 1 or not 0 <= p.distill.weight <= 1 or p.distill.temperature <= 0:
        raise ParamsError(
            "params keys 'distill.student_channels' (>= 1), 'distill.weight' (0..1) and "
            "'distill.temperature' (> 0) are out of range"
        )
    _check_prune(p.prune, p.loss.output)
    _check_search(p.search)
    _check_robustness(p.robustness)
    parse_space(p.search.space, list(flatten(to_dict(p))))
    if p.evaluate.shape_candidates < 1:
        raise ParamsError("params key 'evaluate.shape_candidates' must be >= 1")
    for key in ("preprocess.height", "preprocess.width"):
        value = getattr(p.preprocess, key.split(".")[1])
        if value <= 0 or value % 32:  # MAHT-Net's coarsest stride (the U-Net's is 2**depth <= 32)
            raise ParamsError(f"params key '{key}' must be a positive multiple of 32, got {value}")
    if 2**p.model.unet_depth > 32:
        raise ParamsError(f"params key 'model.unet_depth' must be <= 5, got {p.model.unet_depth}")
    if p.model.output_stride not in (1, 2):
        raise ParamsError(f"params key 'model.output_stride' must be 1 or 2, got {p.model.output_stride}")


def _check_train(t: TrainParams) -> None:
    batch = t.batch_size
    if batch != "auto" and (isinstance(batch, str) or batch < 1):
        raise ParamsError(f"params key 'train.batch_size' must be an integer >= 1 or 'auto', got {batch!r}")
    if t.accumulate_steps < 1:
        raise ParamsError("params key 'train.accumulate_steps' must be >= 1")
    if t.auto_batch.target < 1:
        raise ParamsError(f"params key 'train.auto_batch.target' must be >= 1, got {t.auto_batch.target}")
    if not 0.0 <= t.auto_batch.margin < 1.0:
        raise ParamsError(
            f"params key 'train.auto_batch.margin' must be in [0, 1), got {t.auto_batch.margin}"
        )


def train_fingerprint(t: TrainParams) -> dict[str, Any]:
    """``train`` as it identifies a run (resume fingerprints): ``auto_batch`` only counts when
    ``batch_size`` is ``auto``, so states written before it existed still resume."""
    settings = to_dict(t)
    if t.batch_size != "auto":
        del settings["auto_batch"]
    return settings


def _check_stage(s: StageParams, name: str, output: str) -> None:
    _choice(f"{name}.scheduler", s.scheduler, ("cosine", "plateau"))
    _choice(f"{name}.select", s.select, ("val_mre_mm", "val_sdr_2mm", "val_loss"))
    _choice(f"{name}.average", s.average, ("none", "last", "best"))
    _choice(f"{name}.early_stopping.mode", s.early_stopping.mode, ("all", "any"))
    if s.epochs is None and name not in ("baseline", "distill.train"):
        raise ParamsError(
            f"params key '{name}.epochs' must be an integer (null only for the baseline and distill.train)"
        )
    if s.epochs is not None and s.epochs < 1:
        raise ParamsError(f"params key '{name}.epochs' must be >= 1, got {s.epochs}")
    for key in ("lr", "encoder_lr", "transformer_lr"):
        if getattr(s, key) < 0:
            raise ParamsError(f"params key '{name}.{key}' must be >= 0 (0 freezes the part)")
    if s.lr <= 0:
        raise ParamsError(f"params key '{name}.lr' must be > 0 (the decoder and head always train)")
    weights = to_dict(s.loss_weights)
    for key, value in weights.items():
        if value < 0:
            raise ParamsError(f"params key '{name}.loss_weights.{key}' must be >= 0, got {value}")
    if not any(v > 0 for v in weights.values()):
        raise ParamsError(f"params key '{name}.loss_weights' needs at least one positive weight")
    if output == "heatmap" and s.loss_weights.softmax_ce > 0:
        raise ParamsError(
            f"params key '{name}.loss_weights.softmax_ce' needs loss.output 'logits' (it is 'heatmap')"
        )
    if s.average != "none" and s.average_k < 2:
        raise ParamsError(f"params key '{name}.average_k' must be >= 2 to average checkpoints")


def _check_refine(r: RefineParams) -> None:
    _check_stage(r.train, "refine.train", "logits")
    if r.train.epochs is None:
        raise ParamsError("params key 'refine.train.epochs' must be an integer")
    if r.spacing_mm <= 0 or r.sigma <= 0:
        raise ParamsError("params keys 'refine.spacing_mm' and 'refine.sigma' must be > 0")
    if r.depth < 1 or r.patch_size <= 0 or r.patch_size % 2**r.depth:
        raise ParamsError(
            f"params key 'refine.patch_size' must be a positive multiple of 2**depth, got {r.patch_size}"
        )
    if r.train.loss_weights.softmax_ce <= 0 or any(
        v for k, v in to_dict(r.train.loss_weights).items() if k != "softmax_ce"
    ):
        raise ParamsError("params key 'refine.train.loss_weights': the refiner trains with softmax_ce only")
    if r.batch_size < 1:
        raise ParamsError("params key 'refine.batch_size' must be >= 1")
    if not 0 <= r.rotate_deg <= 90:
        raise ParamsError(f"params key 'refine.rotate_deg' must be in [0, 90], got {r.rotate_deg}")
    if not 0 <= r.zoom < 1:
        raise ParamsError(f"params key 'refine.zoom' must be in [0, 1), got {r.zoom}")


def _check_prune(r: PruneParams, output: str) -> None:
    _check_stage(r.train, "prune.train", output)
    _choice("prune.importance", r.importance, ("l1", "l2"))
    for i, pct in enumerate(r.sparsities_pct):
        if not 0 < pct < 100:
            raise ParamsError(f"params key 'prune.sparsities_pct[{i}]' must be in 1..99 (%), got {pct}")
    if r.round_to < 1:
        raise ParamsError(f"params key 'prune.round_to' must be >= 1, got {r.round_to}")


def _check_search(s: SearchParams) -> None:
    _choice("search.stage", s.stage, ("stage1", "baseline"))
    _choice("search.objective", s.objective, ("val", "crossval"))
    _choice("search.sampler", s.sampler, ("tpe", "random", "grid"))
    _choice("search.pruner", s.pruner, ("median", "hyperband", "none"))
    for key in ("trials", "epochs"):
        if getattr(s, key) < 1:
            raise ParamsError(f"params key 'search.{key}' must be >= 1")
    for i, item in enumerate(s.fixed):
        if "=" not in item:
            raise ParamsError(f"params key 'search.fixed[{i}]' must be key=value, got {item!r}")


def _check_robustness(r: RobustnessParams) -> None:
    checks = {
        "noise_sd": lambda v: v >= 0,
        "gamma": lambda v: v > 0,
        "contrast": lambda v: v >= 0,
        "blur_mm": lambda v: v > 0,
        "jpeg_quality": lambda v: 1 <= v <= 100,
        "rotate_deg": lambda v: abs(v) <= 90,
        "scale": lambda v: v > 0,
        "crop_fraction": lambda v: 0 <= v < 0.5,
    }
    for key, ok in checks.items():
        for i, v in enumerate(getattr(r, key)):
            if not ok(v):
                raise ParamsError(f"params key 'robustness.{key}[{i}]' is out of range: {v}")


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


def yaml_value(value: Any) -> str:
    """A value as a ``dvc exp run -S key=value`` right-hand side (YAML scalars)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def set_dotted(raw: dict, key: str, value: Any) -> None:
    """Set the dotted ``key`` of a parsed ``params.yaml`` mapping; an unknown key is an error."""
    *parents, last = key.split(".")
    section = raw
    for i, name in enumerate(parents):
        if not isinstance(section, dict) or name not in section:
            raise ParamsError(f"unknown params key '{'.'.join(parents[: i + 1])}' (in '{key}')")
        section = section[name]
    if not isinstance(section, dict) or last not in section:
        raise ParamsError(f"unknown params key '{key}'")
    section[last] = value


PATH_KEYS = ("data.root", "model.encoder_weights")  # made absolute by profiles (queued runs)


def load_profiles(path: str | Path, repo: str | Path) -> dict[str, dict]:
    """Named profiles: ``{name: {"description": str, "set": {dotted key: value}}}`` and an
    optional ``purpose`` (``literature``: comparable with published results; ``use``: the
    protocol recommended for new images), with the relative paths of :data:`PATH_KEYS` made
    absolute against ``repo``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"profiles file not found: {path}")
    profiles = yaml.safe_load(path.read_text()) or {}
    for name, profile in profiles.items():
        if set(profile) - {"purpose"} != {"description", "set"}:
            raise ParamsError(
                f"{path}: profile '{name}' needs exactly 'description' and 'set' (and may have 'purpose')"
            )
        if profile.get("purpose", "use") not in ("literature", "use", "study"):
            raise ParamsError(f"{path}: profile '{name}': purpose is literature, use or study")
        for key in PATH_KEYS:
            value = profile["set"].get(key)
            if isinstance(value, str) and not Path(value).is_absolute():
                profile["set"][key] = str((Path(repo) / value).resolve())
    return profiles


def with_settings(raw: dict, settings: dict[str, Any], extra: Sequence[str] = ()) -> Params:
    """Validated params of the parsed ``params.yaml`` mapping ``raw`` (left unchanged) with a
    profile's ``settings`` and then ``key=value`` strings ``extra`` applied."""
    raw = copy.deepcopy(raw)
    for key, value in settings.items():
        set_dotted(raw, key, value)
    for item in extra:
        key, _, value = item.partition("=")
        set_dotted(raw, key, yaml.safe_load(value))
    return parse_params(raw)
