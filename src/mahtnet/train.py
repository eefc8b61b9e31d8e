"""Supervised heatmap training with validation-MRE model selection and early stopping."""

from __future__ import annotations

import dataclasses
import math
import random
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mahtnet import metrics
from mahtnet.checkpoint import save_checkpoint
from mahtnet.codec import HeatmapCodec
from mahtnet.config import Params, to_dict
from mahtnet.data.dataset import LandmarkDataset, build_augmentation
from mahtnet.data.preprocess import PreparedSet
from mahtnet.inference import autocast, select_device
from mahtnet.io import atomic_write
from mahtnet.landmarks import LANDMARK_NAMES
from mahtnet.losses import get_loss, log_heatmaps
from mahtnet.models.factory import build_model
from mahtnet.tracking import Run


@dataclasses.dataclass
class TrainResult:
    best_epoch: int
    best_val_mre_mm: float
    best_val_sdr_2mm: float
    epochs_run: int
    stopped_early: bool
    wall_time_s: float
    seconds_per_epoch: float
    device: str
    parameters: int


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def warmup_cosine(total_steps: int, warmup_steps: int):
    """LR multiplier: linear warm-up, then cosine decay to 1 % of the base LR."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    if info.dataset.augment is not None:
        info.dataset.augment.set_random_seed(info.seed % 2**32)


@torch.no_grad()
def validate(model, loader, data: PreparedSet, codec, loss, device, amp: bool, target_scale: float) -> dict:
    """One pass over the validation set: mean loss, and MRE / SDR2 (mm, original resolution)."""
    model.eval()
    total, coords = 0.0, []
    for batch in loader:
        x = batch["image"].to(device)
        with autocast(device, amp):
            out = model(x).heatmaps
        value = loss.fn(
            out, batch["target"].to(device), batch["visible"].to(device), target_scale=target_scale
        )
        total += value.item() * len(x)
        coords.append(codec.decode(log_heatmaps(out, loss.output).cpu().numpy(), is_log=True)[0])
    pred = data.to_original(np.concatenate(coords))
    errors = metrics.radial_errors_mm(pred, data.landmarks_orig, data.spacing)
    return {
        "val_loss": total / len(data),
        "val_mre_mm": metrics.mre(errors),
        "val_sdr_2mm": metrics.sdr(errors, 2.0),
    }


def train(
    params: Params,
    train_set: PreparedSet,
    val_set: PreparedSet,
    checkpoint_path: str | Path,
    history_path: str | Path,
    run: Run | None = None,
    val_targets: np.ndarray | None = None,
) -> TrainResult:
    """Train ``params.model`` on ``train_set``; keep the checkpoint with the lowest
    validation MRE (mm, original resolution). ``val_targets (N, K, h, w)``: precomputed
    validation heatmaps (from the heatmap stage), else encoded here."""
    tp = params.train
    seed_everything(params.seed)
    if tp.threads > 0:
        torch.set_num_threads(tp.threads)
    device = select_device(tp.device)
    codec = HeatmapCodec.from_params(params.preprocess, params.heatmap)
    loss = get_loss(tp.loss)
    model = build_model(params.model).to(device)
    if model.output_stride != codec.stride:
        raise ValueError(f"model output stride {model.output_stride} != heatmap.stride {codec.stride}")
    n_params = sum(p.numel() for p in model.parameters())

    train_ds = LandmarkDataset(train_set, codec, build_augmentation(tp.augment, seed=params.seed))
    val_ds = LandmarkDataset(val_set, codec, targets=val_targets)
    loader = DataLoader(
        train_ds,
        batch_size=tp.batch_size,
        shuffle=True,
        drop_last=len(train_ds) > tp.batch_size,
        num_workers=tp.num_workers,
        worker_init_fn=_worker_init if tp.num_workers > 0 else None,
        generator=torch.Generator().manual_seed(params.seed),
        pin_memory=device.type == "cuda",
    )
    val_loader = DataLoader(val_ds, batch_size=params.evaluate.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
    steps = tp.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(steps, tp.warmup_epochs * len(loader))
    )
    scaler = torch.amp.GradScaler("cuda", enabled=tp.amp and device.type == "cuda")
    meta = {
        "model": to_dict(params.model),
        "input_size": [params.preprocess.height, params.preprocess.width],
        "heatmap": to_dict(params.heatmap),
        "output_kind": loss.output,
        "landmark_names": list(LANDMARK_NAMES),
        "params": to_dict(params),
    }

    history: list[dict[str, Any]] = []
    best = {"val_mre_mm": math.inf, "val_sdr_2mm": 0.0, "epoch": 0}
    bad_epochs, stopped_early = 0, False
    start = time.perf_counter()
    for epoch in range(1, tp.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        total, count = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch}/{tp.epochs}", leave=False, mininterval=2.0, disable=None)
        for batch in bar:
            x = batch["image"].to(device, non_blocking=True)
            target = batch["target"].to(device, non_blocking=True)
            visible = batch["visible"].to(device)
            with autocast(device, tp.amp):
                out = model(x).heatmaps
            value = loss.fn(out, target, visible, target_scale=tp.mse_target_scale)
            if not torch.isfinite(value):
                raise FloatingPointError(f"training loss became {value.item()} at epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(value).backward()
            if tp.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += value.item() * len(x)
            count += len(x)
            bar.set_postfix(loss=f"{value.item():.4f}")
        train_time = time.perf_counter() - t0

        row = {
            "epoch": epoch,
            "train_loss": total / max(count, 1),
            **validate(model, val_loader, val_set, codec, loss, device, tp.amp, tp.mse_target_scale),
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_time_s": time.perf_counter() - t0,
            "images_per_s": count / train_time,
            "peak_memory_mb": peak_memory_mb(device),
        }
        history.append(row)
        improved = row["val_mre_mm"] < best["val_mre_mm"] - tp.min_delta_mm
        if improved:
            best = {"val_mre_mm": row["val_mre_mm"], "val_sdr_2mm": row["val_sdr_2mm"], "epoch": epoch}
            save_checkpoint(checkpoint_path, model, {**meta, "epoch": epoch, "val": dict(best)})
            bad_epochs = 0
        else:
            bad_epochs += 1
        write_history(history_path, history)
        if run is not None:
            run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        print(
            f"epoch {epoch:3d} loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
            f"val MRE {row['val_mre_mm']:.3f} mm SDR2 {row['val_sdr_2mm']:.1f}% "
            f"lr {row['lr']:.2e} {row['epoch_time_s']:.1f}s{' *' if improved else ''}",
            flush=True,
        )
        if bad_epochs >= tp.patience:
            stopped_early = True
            print(f"early stopping: no improvement for {tp.patience} epochs", flush=True)
            break

    wall = time.perf_counter() - start
    return TrainResult(
        best_epoch=best["epoch"],
        best_val_mre_mm=best["val_mre_mm"],
        best_val_sdr_2mm=best["val_sdr_2mm"],
        epochs_run=len(history),
        stopped_early=stopped_early,
        wall_time_s=wall,
        seconds_per_epoch=wall / max(1, len(history)),
        device=str(device),
        parameters=n_params,
    )


def write_history(path: str | Path, history: list[dict[str, Any]]) -> None:
    """Per-epoch history as CSV (a DVC plot), rewritten atomically each epoch."""
    atomic_write(path, lambda tmp: pd.DataFrame(history).to_csv(tmp, index=False, float_format="%.6g"))
