"""The training stages of the schedule: the U-Net baseline and MAHT-Net stage 1 / 2 / 3 as
:class:`~mahtnet.training.task.TrainTask` s for the :class:`~mahtnet.training.loop.Trainer`.

- Stage set-up (:func:`configure_stage`): per-component learning rates (encoder /
  transformer / decoder + head; 0 freezes a component, BatchNorm included), the transformer
  bypass of stage 1, and the stage's initial weights (the previous stage's checkpoint).
- :func:`stage_task`: the model, its augmented training data, the composite loss and the
  validation (MRE / SDR at the original resolution) of a stage; :func:`train` runs it.
- :class:`SigmaCurriculum`: the heatmap sigma annealed over a stage (``heatmap.sigma_start``).
- The optimisation stages: the students of knowledge distillation (``student``, ``distill``)
  and the fine-tuning of a channel-pruned stage-3 MAHT-Net (``prune``, :mod:`mahtnet.training.prune`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mahtnet import metrics
from mahtnet.codec import HeatmapCodec
from mahtnet.config import (
    DistillParams,
    ModelParams,
    Params,
    StageParams,
    TrainParams,
    to_dict,
    train_fingerprint,
)
from mahtnet.data.dataset import LandmarkDataset, build_augmentation
from mahtnet.data.preprocess import PreparedSet
from mahtnet.decoding.reader import read_peaks
from mahtnet.landmarks import LANDMARK_NAMES
from mahtnet.models.card import CheckpointCard
from mahtnet.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
)
from mahtnet.models.device import autocast
from mahtnet.models.factory import MAHT_NET_KEYS, build_model
from mahtnet.models.head import log_heatmaps
from mahtnet.tracking import Run
from mahtnet.training.distributed import init_distributed, shutdown
from mahtnet.training.kinds import stage_epochs, stage_kind, stage_params
from mahtnet.training.loop import (
    Callback,
    StageOutputs,
    Trainer,
    TrainerSettings,
    TrainResult,
    seed_everything,
)
from mahtnet.training.losses import CompositeLoss, heatmap_distillation
from mahtnet.training.monitor import component_of, named_components
from mahtnet.training.task import TrainTask

# Stage ``prune``: narrows the built model in place, returns what the checkpoint records of it
Prune = Callable[[nn.Module], dict]


def stage_model_params(params: Params, stage: str) -> ModelParams:
    """The model block of ``stage``: the students are U-Nets of ``distill.student_channels``."""
    if stage_kind(stage).student:
        return dataclasses.replace(params.model, unet_channels=params.distill.student_channels)
    return params.model


def build_stage_model(params: Params, stage: str, init: str | Path | None) -> nn.Module:
    """The stage's model: the U-Net for the baseline, MAHT-Net for stages 1-3, starting from
    the ``init`` checkpoint (the previous stage's) when given; stage ``prune`` needs it."""
    kind = stage_kind(stage)
    name = kind.model
    if kind.prunes and init is None:
        raise ValueError(f"stage {stage} needs --init (the full model, e.g. data/models/{kind.init}.pt)")
    model_params = stage_model_params(params, stage)
    if init is None:
        return build_model(name, model_params)
    payload = load_checkpoint(init)
    saved = CheckpointCard.of(payload["meta"]).model
    keys = [k for k in MAHT_NET_KEYS if k != "encoder_weights"] if name == "maht_net" else ["unet_channels"]
    differ = [k for k in keys if saved.get(k) != getattr(model_params, k)]
    if saved.get("name") != name or differ:
        raise CheckpointError(
            f"initial checkpoint {init} is a {saved.get('name')} whose model keys {differ} differ from "
            f"params.yaml; re-run the earlier stages"
        )
    model = build_model(name, dataclasses.replace(model_params, encoder_weights=None))
    model.load_state_dict(payload["model_state"])
    return model


def configure_stage(model: nn.Module, s: StageParams) -> tuple[list[dict], list[nn.Module]]:
    """Apply the stage's transformer bypass and freezing; return the optimizer's parameter
    groups (one per trainable component, with its learning rate) and the BatchNorm layers of
    frozen components (kept in eval mode while training)."""
    lrs = {"encoder": s.encoder_lr, "transformer": s.transformer_lr, "decoder": s.lr, "head": s.lr}
    bypass = s.bypass_transformer and hasattr(model, "bottleneck") and hasattr(model.bottleneck, "bypass")
    if bypass:
        model.bottleneck.bypass = True
        for p in model.bottleneck.blocks.parameters():
            p.requires_grad_(False)
    groups = []
    for component, named in named_components(model).items():
        if lrs[component] == 0:
            for _, p in named:
                p.requires_grad_(False)
        trainable = [p for _, p in named if p.requires_grad]
        if trainable:
            groups.append({"params": trainable, "lr": lrs[component], "name": component})
    frozen_bn = [
        m
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and lrs.get(component_of(model, name + "."), 1) == 0
    ]
    return groups, frozen_bn


def fingerprint(
    params: Params, stage: str, data: list[PreparedSet], init: str | Path | None, world_size: int
) -> str:
    """Identity of a training run: a saved state resumes only a run with the same settings,
    data, initial weights and number of processes."""
    h = hashlib.sha256()
    settings = {k: v for k, v in to_dict(params).items() if k != "tracking"}
    settings["data"] = {k: v for k, v in settings["data"].items() if k != "root"}  # content is hashed
    settings["train"] = train_fingerprint(params.train)
    h.update(json.dumps([settings, stage, world_size], sort_keys=True).encode())
    for d in data:
        for array in (d.images, d.landmarks, d.landmarks_orig):
            h.update(np.ascontiguousarray(array).tobytes())
    if init is not None:
        h.update(Path(init).read_bytes())
    return h.hexdigest()


def batch_loss(loss_fn: CompositeLoss, out, batch: dict, device: torch.device):
    """``loss_fn`` of a model output (:class:`LandmarkOutput`) against a dataset batch:
    ``(total, {term: value})``."""
    return loss_fn(
        out.heatmaps.float(),
        out.coords.float(),
        batch["target"].to(device, non_blocking=True),
        batch["landmarks"].to(device).float(),
        batch["visible"].to(device),
    )


def load_val_targets(folder: Path, codec: HeatmapCodec) -> np.ndarray:
    """Validation heatmaps from the heatmap stage at the model's stride, checked against the codec."""
    path = folder / f"stride{codec.stride}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"heatmap targets not found: {path} (run the heatmaps stage)")
    with np.load(path) as z:
        stored = (float(z["sigma"]), int(z["stride"]), tuple(int(v) for v in z["input_size"]))
        if stored != (codec.sigma, codec.stride, codec.input_size):
            raise ValueError(f"{path} was made with (sigma, stride, input size) {stored}, params say {codec}")
        return z["val"]


def stage_codec(params: Params, stage: str) -> HeatmapCodec:
    """The heatmap codec of ``stage``'s model: MAHT-Net predicts at ``model.output_stride``,
    the U-Net at stride 1."""
    stride = params.model.output_stride if stage_kind(stage).model == "maht_net" else 1
    return HeatmapCodec.from_params(params.preprocess, params.heatmap, stride)


@torch.no_grad()
def validate(model, loader, data: PreparedSet, codec, loss_fn: CompositeLoss, device, tp) -> dict:
    """One pass over the validation set: mean loss, and MRE / SDR2 (mm, original resolution)."""
    was_training = model.training
    model.eval()
    total, coords = 0.0, []
    for batch in loader:
        x = batch["image"].to(device)
        with autocast(device, tp.amp, tp.cpu_bf16):
            out = model(x)
        value, _ = batch_loss(loss_fn, out, batch, device)
        total += value.item() * len(x)
        coords.append(read_peaks(log_heatmaps(out.heatmaps, loss_fn.output).cpu().numpy(), codec)[0])
    model.train(was_training)
    pred = data.to_original(np.concatenate(coords))
    errors = metrics.radial_errors_mm(pred, data.landmarks_orig, data.spacing)
    return {
        "val_loss": total / len(data),
        "val_mre_mm": metrics.mre(errors),
        "val_sdr_2mm": metrics.sdr(errors, 2.0),
    }


def load_teacher(path: str | Path | None, device: torch.device) -> nn.Module:
    """The distillation teacher (a checkpoint, frozen, eval mode): images -> log-heatmaps."""
    from mahtnet.models.checkpoint import model_from_checkpoint
    from mahtnet.models.readout import HeatmapNet

    if path is None:
        raise ValueError("stage distill needs --teacher (a checkpoint, e.g. data/models/stage3.pt)")
    model, _, kind = model_from_checkpoint(load_checkpoint(path))
    teacher = HeatmapNet(model, kind).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def distill_loss(gt_loss, teacher: nn.Module, d: DistillParams, device: torch.device):
    """``(1 - weight) * gt_loss + weight * T^2 * KL(teacher || student)`` on each batch (the
    teacher sees the same augmented images); the KL term is logged as ``distill_kl``."""

    def loss(out, batch):
        total, terms = gt_loss(out, batch)
        with torch.no_grad():
            target = teacher(batch["image"].to(device))
        kd = heatmap_distillation(out.heatmaps, target, d.temperature)
        return (1 - d.weight) * total + d.weight * kd, {**terms, "distill_kl": kd.detach()}

    return loss


class SigmaCurriculum(Callback):
    """Heatmap sigma annealed from ``start`` to the codec's sigma over the first ``fraction``
    of the epochs (linear in the epoch; the validation targets keep the final sigma)."""

    def __init__(self, codec: HeatmapCodec, start: float, fraction: float, epochs: int):
        self.codec, self.start, self.span = codec, start, max(1, round(fraction * epochs))

    def sigma(self, epoch: int) -> float:
        t = min(1.0, (epoch - 1) / max(1, self.span - 1)) if self.span > 1 else 1.0
        return self.start + t * (self.codec.sigma - self.start)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        c = self.codec
        trainer.task.train_ds.codec = HeatmapCodec(c.input_size, self.sigma(epoch), c.stride)


def stage_task(
    params: Params,
    stage: str,
    train_set: PreparedSet,
    val_set: PreparedSet,
    init: str | Path | None,
    val_targets: np.ndarray | None,
    device: torch.device,
    world_size: int,
    teacher: str | Path | None = None,
    prune: Prune | None = None,
) -> TrainTask:
    """The task of a heatmap-model stage: the U-Net baseline, a MAHT-Net stage, a student
    (``distill``: with the ``teacher`` checkpoint's heatmaps as soft targets) or the
    fine-tuning of the ``init`` MAHT-Net narrowed by ``prune`` (``prune``, see
    :func:`mahtnet.training.prune.prune_stage_model`)."""
    kind = stage_kind(stage)
    s: StageParams = stage_params(params, stage)
    seed_everything(params.seed)
    model = build_stage_model(params, stage, init)
    if kind.prunes and prune is None:
        raise ValueError(f"stage {stage} needs a sparsity (--sparsity-pct)")
    pruned = prune(model) if kind.prunes else None
    name = stage if pruned is None else f"{stage}_{pruned['sparsity']:g}"
    codec = HeatmapCodec.from_params(params.preprocess, params.heatmap, model.output_stride)
    loss_fn = CompositeLoss.from_params(params.loss, to_dict(s.loss_weights), s.uncertainty_weighting)
    groups, frozen_bn = configure_stage(model, s)
    augment = build_augmentation(params.train.augment, seed=params.seed)
    train_ds = LandmarkDataset(train_set, codec, augment, doctors=params.data.gt == "doctors")
    val_ds = LandmarkDataset(val_set, codec, targets=val_targets)
    val_loader = DataLoader(val_ds, batch_size=params.evaluate.batch_size)
    probe = next(iter(DataLoader(val_ds, batch_size=min(2, len(val_ds)))))["image"].to(device)
    tp = params.train
    loss = lambda out, batch: batch_loss(loss_fn, out, batch, device)
    if kind.teacher:
        loss = distill_loss(loss, load_teacher(teacher, device), params.distill, device)
    return TrainTask(
        name=name,
        model=model,
        loss_fn=loss_fn,
        groups=groups,
        frozen_bn=frozen_bn,
        train_ds=train_ds,
        loss=loss,
        validate=lambda m: validate(m, val_loader, val_set, codec, loss_fn, device, tp),
        probe=probe,
        card=CheckpointCard(
            kind="coarse",
            architecture=kind.model,
            model={"name": kind.model, **to_dict(stage_model_params(params, stage))},
            input_size=(params.preprocess.height, params.preprocess.width),
            sigma=codec.sigma,
            stride=codec.stride,
            output_kind=loss_fn.output,
            landmark_names=tuple(LANDMARK_NAMES),
            stage=stage,
            params=to_dict(params),
            pruned=pruned or None,
            bypass_transformer=bool(getattr(getattr(model, "bottleneck", None), "bypass", False)),
        ),
        fingerprint=fingerprint(params, name, [train_set, val_set], teacher or init, world_size),
    )


def loaded_batch(tp: TrainParams) -> int:
    """The batch each step loads (per process): ``train.batch_size``, or with ``auto`` its
    ``auto_batch.target`` (the trainer splits it into the micro-batches that fit)."""
    return tp.auto_batch.target if tp.batch_size == "auto" else tp.batch_size


def stage_callbacks(params: Params, stage: str, task: TrainTask) -> list[Callback]:
    """The stage's curriculum (``heatmap.sigma_start``), if any."""
    h = params.heatmap
    if h.sigma_start is None:
        return []
    return [
        SigmaCurriculum(task.train_ds.codec, h.sigma_start, h.anneal_fraction, stage_epochs(params, stage))
    ]


def train(
    params: Params,
    stage: str,
    train_set: PreparedSet,
    val_set: PreparedSet,
    out: StageOutputs,
    init: str | Path | None = None,
    run: Run | None = None,
    val_targets: np.ndarray | None = None,
    teacher: str | Path | None = None,
    prune: Prune | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train ``stage`` (``"baseline"``, ``"stage1"``-``"stage3"``, a student, ``"prune"``) and
    write its checkpoint. ``val_targets (N, K, h, w)``: validation heatmaps from the heatmap
    stage (None: made from the landmarks); ``prune``: stage ``prune``'s channel pruning of the
    ``init`` model; ``callbacks``: extra per-epoch hooks (a search's
    pruning report), after the stage's own."""
    info, device = init_distributed(params.train.device)
    try:
        if params.train.threads > 0:
            torch.set_num_threads(params.train.threads)
        task = stage_task(
            params, stage, train_set, val_set, init, val_targets, device, info.world_size, teacher, prune
        )
        trainer = Trainer(
            task,
            stage_params(params, stage),
            params.train,
            TrainerSettings(stage_epochs(params, stage), loaded_batch(params.train), params.seed),
            out,
            info,
            device,
            run,
            [*stage_callbacks(params, stage, task), *callbacks],
        )
        return trainer.fit()
    finally:
        shutdown(info)
