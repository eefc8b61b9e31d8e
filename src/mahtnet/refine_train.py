"""The refinement stage as a :class:`~mahtnet.trainer.TrainTask`: a small U-Net trained on
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
from mahtnet.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from mahtnet.config import Params, RefineParams, to_dict, train_fingerprint
from mahtnet.data.preprocess import PreparedSet
from mahtnet.distributed import init_distributed, shutdown
from mahtnet.inference import predict
from mahtnet.landmarks import LANDMARK_NAMES
from mahtnet.refine import (
    FineSet,
    JitterModel,
    PatchDataset,
    build_refiner,
    patch_codec,
    refine_loss,
    refine_points,
)
from mahtnet.tracking import Run
from mahtnet.train import configure_stage
from mahtnet.trainer import StageOutputs, Trainer, TrainerSettings, TrainResult, TrainTask, seed_everything


def coarse_predictions(
    checkpoint: str | Path, data: PreparedSet, device: torch.device, batch_size: int
) -> np.ndarray:
    """Landmarks ``(N, K, 2)`` (original px) of a coarse checkpoint on ``data`` (arg-max decoding)."""
    model, codec, output_kind = model_from_checkpoint(load_checkpoint(checkpoint))
    coords, _ = predict(model.to(device), data.images, codec, output_kind, device, batch_size)
    return data.to_original(coords)


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
        meta={
            "kind": "refiner",
            "model": {"name": "refiner", "channels": r.channels, "depth": r.depth},
            "patch_size": r.patch_size,
            "sigma": r.sigma,
            "spacing_mm": r.spacing_mm,
            "jitter": jitter.to_dict(),
            "coarse_val_mre_mm": metrics.mre(np.linalg.norm(errors_mm, axis=-1)),
            "coarse_checkpoint": str(coarse),
            "landmark_names": list(LANDMARK_NAMES),
            "params": to_dict(params),
        },
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
    refined, _ = refine_points(
        model, fine, coarse_val, r.patch_size, patch_codec(r.patch_size, r.sigma), device
    )
    model.train(was_training)
    errors = metrics.radial_errors_mm(refined, fine.landmarks_orig, fine.spacing)
    return {
        "val_loss": total / count,
        "val_mre_mm": metrics.mre(errors),
        "val_sdr_2mm": metrics.sdr(errors, 2.0),
    }


def load_refiner(path: str | Path) -> tuple[nn.Module, dict]:
    """A trained refiner and its checkpoint meta (patch size, sigma, spacing)."""
    payload = load_checkpoint(path)
    meta = payload["meta"]
    if meta.get("kind") != "refiner":
        raise CheckpointError(f"{path} is not a refiner checkpoint (train_refine writes those)")
    model = build_refiner(len(meta["landmark_names"]), meta["model"]["channels"], meta["model"]["depth"])
    model.load_state_dict(payload["model_state"])
    return model.eval(), meta


def apply_refiner(
    model: nn.Module, meta: dict, fine: FineSet, coarse_orig: np.ndarray, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Refined landmarks ``(N, K, 2)`` original px and their confidence ``(N, K)``."""
    size, sigma = meta["patch_size"], meta["sigma"]
    return refine_points(model.to(device), fine, coarse_orig, size, patch_codec(size, sigma), device)


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
