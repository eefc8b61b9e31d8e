"""The refinement stage as a :class:`~mahtnet.training.task.TrainTask`: a small U-Net trained on
fine-resolution patches around each landmark, with patch centres jittered by the coarse
model's own validation errors, validated on patches centred on the coarse model's
validation predictions (the situation it will meet at test time)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mahtnet import metrics
from mahtnet.config import Params, RefineParams, to_dict, train_fingerprint
from mahtnet.data.fine import FineSet
from mahtnet.data.preprocess import PreparedSet
from mahtnet.decoding import LandmarkReader, TorchBackend, TorchRefiner
from mahtnet.decoding.reader import refine_landmarks
from mahtnet.landmarks import LANDMARK_NAMES
from mahtnet.models.card import CheckpointCard, ModelCard
from mahtnet.models.factory import build_refiner
from mahtnet.tracking import Run
from mahtnet.training.distributed import init_distributed, shutdown
from mahtnet.training.loop import (
    StageOutputs,
    Trainer,
    TrainerSettings,
    TrainResult,
    seed_everything,
)
from mahtnet.training.refiner import JitterModel, PatchDataset, refine_loss
from mahtnet.training.stages import configure_stage
from mahtnet.training.task import TrainTask


def coarse_predictions(
    checkpoint: str | Path, data: PreparedSet, device: torch.device, batch_size: int
) -> np.ndarray:
    """Landmarks ``(N, K, 2)`` (original px) of a coarse checkpoint on ``data`` (arg-max decoding)."""
    return LandmarkReader(TorchBackend(checkpoint, device), batch_size=batch_size).read_prepared(data).final


def check_aligned(fine: FineSet, data: PreparedSet, what: str) -> None:
    if list(fine.ids) != list(data.ids) or not np.allclose(fine.landmarks_orig, data.landmarks_orig):
        raise ValueError(f"fine {what} images are not the prepared {what} images (re-run prepare_fine)")


def _fingerprint(params: Params, fine: list[FineSet], coarse: str | Path) -> str:
    h = hashlib.sha256()
    settings = {"refine": to_dict(params.refine), "train": train_fingerprint(params.train)}
    h.update(json.dumps([settings, params.seed], sort_keys=True).encode())
    for f in fine:
        h.update(np.ascontiguousarray(f.images).tobytes())
        h.update(np.ascontiguousarray(f.landmarks_orig).tobytes())
    h.update(Path(coarse).read_bytes())
    return h.hexdigest()


def refine_task(
    params: Params,
    coarse: str | Path,
    fine_train: FineSet,
    fine_val: FineSet,
    val_set: PreparedSet,
    device: torch.device,
) -> TrainTask:
    """The refiner of the coarse checkpoint ``coarse``; ``val_set``: the prepared validation
    images (the coarse model's input) matching ``fine_val``."""
    r = params.refine
    check_aligned(fine_val, val_set, "validation")
    coarse_val = coarse_predictions(coarse, val_set, device, params.evaluate.batch_size)
    errors_mm = (coarse_val - val_set.landmarks_orig) * val_set.spacing[:, None, None]
    jitter = JitterModel.fit(errors_mm, scale=r.jitter_scale, floor_mm=r.jitter_floor_mm)
    seed_everything(params.seed)
    model = build_refiner(len(LANDMARK_NAMES), r.channels, r.depth)
    groups, frozen_bn = configure_stage(model, r.train)
    train_ds = PatchDataset(
        fine_train,
        r.patch_size,
        r.sigma,
        jitter,
        r.brightness,
        r.contrast,
        params.seed,
        rotate_deg=r.rotate_deg,
        zoom=r.zoom,
        doctors=params.data.gt == "doctors",
    )
    val_ds = PatchDataset(fine_val, r.patch_size, r.sigma, centres_orig=coarse_val)
    loss_fn = nn.Module()  # no learned loss weights

    def loss(out, batch):
        value = refine_loss(out.heatmaps.float(), batch["landmark"], batch["target"], batch["visible"])
        return value, {"softmax_ce": value}

    return TrainTask(
        name="refine",
        model=model,
        loss_fn=loss_fn,
        groups=groups,
        frozen_bn=frozen_bn,
        train_ds=train_ds,
        loss=loss,
        validate=lambda m: validate_refiner(m, val_ds, coarse_val, r, device),
        probe=next(iter(DataLoader(val_ds, batch_size=2)))["image"].to(device),
        card=CheckpointCard(
            kind="refiner",
            architecture="refiner",
            model={"name": "refiner", "channels": r.channels, "depth": r.depth},
            input_size=(r.patch_size, r.patch_size),
            sigma=r.sigma,
            stride=1,
            output_kind="logits",
            landmark_names=tuple(LANDMARK_NAMES),
            stage="refine",
            params=to_dict(params),
            spacing_mm=r.spacing_mm,
            jitter=jitter.to_dict(),
            coarse_checkpoint=str(coarse),
            coarse_val_mre_mm=metrics.mre(np.linalg.norm(errors_mm, axis=-1)),
        ),
        fingerprint=_fingerprint(params, [fine_train, fine_val], coarse),
    )


@torch.no_grad()
def validate_refiner(
    model: nn.Module, val_ds: PatchDataset, coarse_val: np.ndarray, r: RefineParams, device: torch.device
) -> dict[str, float]:
    """Loss on the patches centred on the coarse validation predictions, and the MRE / SDR2 of
    the refined landmarks (original resolution)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in DataLoader(val_ds, batch_size=r.batch_size):
        out = model(batch["image"].to(device))
        value = refine_loss(out.heatmaps.float(), batch["landmark"], batch["target"], batch["visible"])
        total, count = total + value.item() * len(batch["image"]), count + len(batch["image"])
    fine = val_ds.fine
    refined, _ = refine_landmarks(TorchRefiner.from_module(model, refiner_card(r), device), fine, coarse_val)
    model.train(was_training)
    errors = metrics.radial_errors_mm(refined, fine.landmarks_orig, fine.spacing)
    return {
        "val_loss": total / count,
        "val_mre_mm": metrics.mre(errors),
        "val_sdr_2mm": metrics.sdr(errors, 2.0),
    }


def refiner_card(r: RefineParams) -> ModelCard:
    """The card of a refiner being trained with ``r`` (no file yet)."""
    size = int(r.patch_size)
    return ModelCard(
        file="(training)", sha256="", format="pytorch", architecture="refiner", input_size=(size, size),
        sigma=float(r.sigma), stride=1, landmark_names=tuple(LANDMARK_NAMES), training_data=None,
        kind="refiner", spacing_mm=float(r.spacing_mm),
    )  # fmt: skip


def train_refiner(
    params: Params,
    coarse: str | Path,
    fine_train: FineSet,
    fine_val: FineSet,
    val_set: PreparedSet,
    out: StageOutputs,
    run: Run | None = None,
) -> TrainResult:
    """Train the refiner of ``coarse`` with ``refine.train``'s schedule and write its checkpoint."""
    info, device = init_distributed(params.train.device)
    try:
        if params.train.threads > 0:
            torch.set_num_threads(params.train.threads)
        task = refine_task(params, coarse, fine_train, fine_val, val_set, device)
        r = params.refine
        settings = TrainerSettings(r.train.epochs, r.batch_size, params.seed)
        return Trainer(task, r.train, params.train, settings, out, info, device, run).fit()
    finally:
        shutdown(info)
