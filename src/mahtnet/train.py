"""Training of one stage of the schedule: the U-Net baseline, or MAHT-Net stage 1 / 2 / 3.

- Stage setup (:func:`configure_stage`): per-component learning rates (encoder /
  transformer / decoder + head; 0 freezes a component, BatchNorm included), the transformer
  bypass of stage 1, and the stage's initial weights (the previous stage's checkpoint).
- Optimisation: AdamW, warm-up + cosine per step or reduce-on-plateau per epoch, gradient
  clipping, gradient accumulation, fp16 autocast + gradient scaling on CUDA (bf16 autocast
  on CPU as an option), DistributedDataParallel under ``torchrun``.
- Model selection on the validation split (``select``), early stopping on several criteria
  (:class:`EarlyStopping`), averaging of the last / best k per-epoch weights.
- Exact resume: after every epoch the full training state (model, optimizer, scheduler,
  scaler, loss weights, RNG, early stopping, history) is written atomically to
  ``<state_dir>/last.pt``; a rerun with the same settings continues from it. Every epoch
  reseeds all random generators from ``seed + 1000 * epoch``, so a resumed run draws the same
  augmentations and batches as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import random
import resource
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from mahtnet import metrics
from mahtnet.checkpoint import (
    CheckpointError,
    average_state_dicts,
    load_checkpoint,
    load_train_state,
    save_checkpoint,
    save_train_state,
)
from mahtnet.codec import HeatmapCodec
from mahtnet.config import EarlyStoppingParams, Params, StageParams, stage_epochs, to_dict
from mahtnet.data.dataset import LandmarkDataset, build_augmentation
from mahtnet.data.preprocess import PreparedSet
from mahtnet.distributed import DistInfo, all_reduce_sum, average_gradients, init_distributed, shutdown
from mahtnet.inference import autocast
from mahtnet.io import atomic_write, load_torch
from mahtnet.landmarks import LANDMARK_NAMES
from mahtnet.losses import CompositeLoss, log_heatmaps
from mahtnet.models.factory import MAHT_NET_KEYS, build_model
from mahtnet.monitor import GradientMonitor, activation_stats, component_of, named_components
from mahtnet.plots import plot_grad_flow
from mahtnet.tracking import Run

MODEL_OF_STAGE = {"baseline": "unet", "stage1": "maht_net", "stage2": "maht_net", "stage3": "maht_net"}
HIGHER_IS_BETTER = {"val_mre_mm": False, "val_sdr_2mm": True, "val_loss": False}


@dataclasses.dataclass
class StageOutputs:
    checkpoint: Path  # the stage's model checkpoint (best or averaged)
    state_dir: Path  # resume state and per-epoch weights (a DVC ``persist`` output)
    history: Path  # per-epoch CSV (DVC plots)
    grad_flow: Path  # gradient-flow plot of the last epoch (PNG)


@dataclasses.dataclass
class TrainResult:
    stage: str
    best_epoch: int
    best_val_mre_mm: float
    best_val_sdr_2mm: float
    best_val_loss: float
    epochs_run: int
    stopped_early: bool
    stop_reason: str
    resumed_at_epoch: int  # 0: a fresh start
    averaged: bool  # the written checkpoint is an average of per-epoch weights
    output_val_mre_mm: float  # validation MRE of the written checkpoint
    output_val_sdr_2mm: float
    wall_time_s: float  # training time, summed over resumed runs
    seconds_per_epoch: float
    images_per_s: float
    device: str
    world_size: int
    parameters: int
    trainable_parameters: int


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
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


class EarlyStopping:
    """Watches validation MRE, SDR2 and loss (each with its patience and min delta; patience 0
    = not watched). ``mode`` all: stop when every watched criterion is exhausted; any: when one is."""

    CRITERIA = {"mre": "val_mre_mm", "sdr2": "val_sdr_2mm", "loss": "val_loss"}  # params prefix -> score

    def __init__(self, p: EarlyStoppingParams):
        self.mode = p.mode
        self.watch = {
            name: (
                getattr(p, f"{name}_patience"),
                getattr(p, f"{name}_min_delta" + ("_mm" if name == "mre" else "")),
            )
            for name in self.CRITERIA
            if getattr(p, f"{name}_patience") > 0
        }
        self.best: dict[str, float] = {}
        self.bad = dict.fromkeys(self.watch, 0)

    def update(self, row: dict[str, float]) -> str:
        """Record an epoch; return the reason to stop, or "" to go on."""
        for name, (_, min_delta) in self.watch.items():
            key = self.CRITERIA[name]
            higher = HIGHER_IS_BETTER[key]
            gain = row[key] - self.best.get(name, -math.inf if higher else math.inf)
            if (gain if higher else -gain) > min_delta:
                self.best[name], self.bad[name] = row[key], 0
            else:
                self.bad[name] += 1
        exhausted = [n for n, (patience, _) in self.watch.items() if self.bad[n] >= patience]
        if not self.watch or not exhausted or (self.mode == "all" and len(exhausted) < len(self.watch)):
            return ""
        return ", ".join(f"no {self.CRITERIA[n]} improvement for {self.bad[n]} epochs" for n in exhausted)

    def state_dict(self) -> dict:
        return {"best": dict(self.best), "bad": dict(self.bad)}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad = dict(state["best"]), dict(state["bad"])


def build_stage_model(params: Params, stage: str, init: str | Path | None) -> nn.Module:
    """The stage's model: the U-Net for the baseline, MAHT-Net for stages 1-3, starting from
    the ``init`` checkpoint (the previous stage's) when given."""
    name = MODEL_OF_STAGE[stage]
    model_params = params.model
    if init is None:
        return build_model(name, model_params)
    payload = load_checkpoint(init)
    saved = payload["meta"]["model"]
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
    h.update(json.dumps([settings, stage, world_size], sort_keys=True).encode())
    for d in data:
        for array in (d.images, d.landmarks, d.landmarks_orig):
            h.update(np.ascontiguousarray(array).tobytes())
    if init is not None:
        h.update(Path(init).read_bytes())
    return h.hexdigest()


def _reseed(seed: int, epoch: int, generator: torch.Generator, dataset: LandmarkDataset) -> None:
    s = seed + 1000 * epoch
    seed_everything(s)
    generator.manual_seed(s)
    if dataset.augment is not None:
        dataset.augment.set_random_seed(s)


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    if info.dataset.augment is not None:
        info.dataset.augment.set_random_seed(info.seed % 2**32)


def _rng_state() -> dict:
    """RNG states as tensors and plain Python values (loadable with ``weights_only``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def stage_codec(params: Params, stage: str) -> HeatmapCodec:
    """The heatmap codec of ``stage``'s model: MAHT-Net predicts at ``model.output_stride``,
    the U-Net at stride 1."""
    stride = params.model.output_stride if MODEL_OF_STAGE[stage] == "maht_net" else 1
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
        coords.append(codec.decode(log_heatmaps(out.heatmaps, loss_fn.output).cpu().numpy(), is_log=True)[0])
    model.train(was_training)
    pred = data.to_original(np.concatenate(coords))
    errors = metrics.radial_errors_mm(pred, data.landmarks_orig, data.spacing)
    return {
        "val_loss": total / len(data),
        "val_mre_mm": metrics.mre(errors),
        "val_sdr_2mm": metrics.sdr(errors, 2.0),
    }


def _better(a: float, b: float, key: str) -> bool:
    return a > b if HIGHER_IS_BETTER[key] else a < b


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train(
    params: Params,
    stage: str,
    train_set: PreparedSet,
    val_set: PreparedSet,
    out: StageOutputs,
    init: str | Path | None = None,
    run: Run | None = None,
    val_targets: np.ndarray | None = None,
) -> TrainResult:
    """Train ``stage`` (``"baseline"``, ``"stage1"``, ``"stage2"``, ``"stage3"``) and write its
    checkpoint. ``val_targets (N, K, h, w)``: validation heatmaps from the heatmap stage."""
    info, device = init_distributed(params.train.device)
    try:
        return _train(params, stage, train_set, val_set, out, init, run, val_targets, info, device)
    finally:
        shutdown(info)


def _train(
    params, stage, train_set, val_set, out, init, run, val_targets, info: DistInfo, device
) -> TrainResult:
    s: StageParams = getattr(params, stage)
    tp = params.train
    epochs = stage_epochs(params, stage)
    if tp.threads > 0:
        torch.set_num_threads(tp.threads)
    seed_everything(params.seed)
    model = build_stage_model(params, stage, init)
    codec = HeatmapCodec.from_params(params.preprocess, params.heatmap, model.output_stride)
    loss_fn = CompositeLoss.from_params(params.loss, to_dict(s.loss_weights), s.uncertainty_weighting)
    groups, frozen_bn = configure_stage(model, s)
    model.to(device)
    loss_fn.to(device)
    if any(True for _ in loss_fn.parameters()):
        groups.append({"params": list(loss_fn.parameters()), "lr": s.lr, "weight_decay": 0.0, "name": "loss"})
    optimizer = torch.optim.AdamW(groups, lr=s.lr, weight_decay=tp.weight_decay)
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for g in groups for p in g["params"])

    train_ds = LandmarkDataset(train_set, codec, build_augmentation(tp.augment, seed=params.seed))
    val_ds = LandmarkDataset(val_set, codec, targets=val_targets)
    drop_last = len(train_ds) > tp.batch_size * info.world_size
    sampler = (
        DistributedSampler(
            train_ds, info.world_size, info.rank, shuffle=True, seed=params.seed, drop_last=drop_last
        )
        if info.enabled
        else None
    )
    generator = torch.Generator()
    loader = DataLoader(
        train_ds,
        batch_size=tp.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=tp.num_workers,
        worker_init_fn=_worker_init if tp.num_workers > 0 else None,
        generator=generator,
        pin_memory=device.type == "cuda",
    )
    val_loader = DataLoader(val_ds, batch_size=params.evaluate.batch_size)
    steps_per_epoch = math.ceil(len(loader) / tp.accumulate_steps)
    if s.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(epochs * steps_per_epoch, s.warmup_epochs * steps_per_epoch)
        )
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=s.plateau_factor, patience=s.plateau_patience
        )
    scaler = torch.amp.GradScaler("cuda", enabled=tp.amp and device.type == "cuda")
    net = model
    if info.enabled:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    stopper = EarlyStopping(s.early_stopping)
    monitor = GradientMonitor(model)
    probe = next(iter(DataLoader(val_ds, batch_size=min(2, len(val_ds)))))["image"].to(device)
    meta = {
        "model": {"name": MODEL_OF_STAGE[stage], **to_dict(params.model)},
        "input_size": [params.preprocess.height, params.preprocess.width],
        "heatmap": {"sigma": codec.sigma, "stride": codec.stride},
        "output_kind": loss_fn.output,
        "landmark_names": list(LANDMARK_NAMES),
        "stage": stage,
        "bypass_transformer": bool(getattr(getattr(model, "bottleneck", None), "bypass", False)),
        "params": to_dict(params),
    }

    state_path = out.state_dir / "last.pt"
    fp = fingerprint(params, stage, [train_set, val_set], init, info.world_size)
    history: list[dict[str, Any]] = []
    best = {"epoch": 0, "val_mre_mm": math.inf, "val_sdr_2mm": 0.0, "val_loss": math.inf}
    kept: list[dict] = []  # per-epoch weight files for averaging: {"epoch", "score", "file"}
    grad_means: dict[str, float] = {}
    start_epoch, resumed_at, elapsed, stop_reason = 1, 0, 0.0, ""
    if state_path.exists():
        state = load_train_state(state_path)
        if state["fingerprint"] == fp:
            model.load_state_dict(state["model_state"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            loss_fn.load_state_dict(state["loss_state"])
            stopper.load_state_dict(state["early_stopping"])
            _set_rng_state(state["rng"])
            history, best, kept = state["history"], state["best"], state["kept"]
            grad_means, elapsed, stop_reason = state["grad_means"], state["elapsed_s"], state["stop_reason"]
            start_epoch = resumed_at = state["epoch"] + 1
            if info.is_main:
                print(f"{stage}: resuming after epoch {state['epoch']} from {state_path}", flush=True)
        elif info.is_main:
            print(f"{stage}: {state_path} is from other settings or data; starting afresh", flush=True)
    if stop_reason:
        start_epoch = epochs + 1  # an early-stopped run is complete

    for epoch in range(start_epoch, epochs + 1):
        t0 = time.perf_counter()
        _reseed(params.seed, epoch, generator, train_ds)
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        for m in frozen_bn:
            m.eval()
        sums: dict[str, float] = defaultdict(float)
        optimizer.zero_grad(set_to_none=True)
        bar = tqdm(loader, desc=f"{stage} {epoch}/{epochs}", leave=False, mininterval=2.0, disable=None)
        for i, batch in enumerate(bar):
            x = batch["image"].to(device, non_blocking=True)
            step_now = (i + 1) % tp.accumulate_steps == 0 or i + 1 == len(loader)
            sync = contextlib.nullcontext() if step_now or not info.enabled else net.no_sync()
            with sync:
                with autocast(device, tp.amp, tp.cpu_bf16):
                    pred = net(x)
                total, terms = batch_loss(loss_fn, pred, batch, device)
                if not torch.isfinite(total):
                    raise FloatingPointError(f"{stage}: training loss became {total.item()} at epoch {epoch}")
                scaler.scale(total / tp.accumulate_steps).backward()
            if step_now:
                scaler.unscale_(optimizer)
                average_gradients(loss_fn.parameters(), info)
                monitor.update()
                if tp.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], tp.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                if s.scheduler == "cosine":
                    scheduler.step()
            n = len(x)
            sums["train_loss"] += total.item() * n
            for k, v in terms.items():
                sums[f"train_{k}"] += v.item() * n
            sums["count"] += n
            bar.set_postfix(loss=f"{total.item():.4f}")
        keys = sorted(sums)
        reduced = all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64), info)
        sums = dict(zip(keys, reduced.tolist(), strict=True))
        train_time = time.perf_counter() - t0
        val = validate(model, val_loader, val_set, codec, loss_fn, device, tp)
        if s.scheduler == "plateau":
            scheduler.step(val["val_mre_mm"])
        norms, grad_means = monitor.epoch_summary()
        count = sums.pop("count")
        row = {
            "epoch": epoch,
            **{k: v / count for k, v in sums.items()},
            **val,
            **{f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups},
            "epoch_time_s": time.perf_counter() - t0,
            "images_per_s": count / train_time,
            "peak_memory_mb": peak_memory_mb(device),
            **norms,
            **activation_stats(model, probe),
        }
        row = {k: v if k == "epoch" else float(v) for k, v in row.items()}
        history.append(row)
        improved = _better(row[s.select], best[s.select], s.select) or best["epoch"] == 0
        if improved:
            best = {"epoch": epoch, **{k: row[k] for k in HIGHER_IS_BETTER}}
        stop_reason = stopper.update(row)
        elapsed += time.perf_counter() - t0
        if info.is_main:
            if improved:
                save_checkpoint(out.state_dir / "best.pt", model, {**meta, "epoch": epoch, "val": dict(best)})
            kept = _keep_epoch_weights(model, out.state_dir, kept, epoch, row[s.select], s)
            write_history(out.history, history)
            save_train_state(
                state_path,
                {
                    "fingerprint": fp,
                    "epoch": epoch,
                    "model_state": _weights(model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "loss_state": loss_fn.state_dict(),
                    "early_stopping": stopper.state_dict(),
                    "rng": _rng_state(),
                    "history": history,
                    "best": best,
                    "kept": kept,
                    "grad_means": grad_means,
                    "elapsed_s": elapsed,
                    "stop_reason": stop_reason,
                },
            )
            if run is not None:
                run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            print(
                f"{stage} epoch {epoch:3d} loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
                f"val MRE {row['val_mre_mm']:.3f} mm SDR2 {row['val_sdr_2mm']:.1f}% "
                f"lr {optimizer.param_groups[0]['lr']:.2e} {row['epoch_time_s']:.1f}s"
                + (" *" if improved else ""),
                flush=True,
            )
        if stop_reason:
            if info.is_main:
                print(f"{stage}: early stopping: {stop_reason}", flush=True)
            break

    averaged = False
    if info.is_main:
        model.load_state_dict(load_checkpoint(out.state_dir / "best.pt")["model_state"])
        output_val = {k: best[k] for k in HIGHER_IS_BETTER}
        if s.average != "none" and len(kept) >= 2:
            averaged, output_val = _try_average(
                model,
                kept,
                best,
                s,
                lambda: validate(model, val_loader, val_set, codec, loss_fn, device, tp),
                stage,
            )
        epochs_kept = [k["epoch"] for k in kept] if averaged else [best["epoch"]]
        meta = {**meta, "epoch": best["epoch"], "val": output_val, "averaged_epochs": epochs_kept}
        save_checkpoint(out.checkpoint, model, meta)
        if grad_means:
            plot_grad_flow(grad_means, {n: component_of(model, n) for n in grad_means}, out.grad_flow)
        write_history(out.history, history)
    ran = len(history)
    return TrainResult(
        stage=stage,
        best_epoch=best["epoch"],
        best_val_mre_mm=best["val_mre_mm"],
        best_val_sdr_2mm=best["val_sdr_2mm"],
        best_val_loss=best["val_loss"],
        epochs_run=ran,
        stopped_early=bool(stop_reason),
        stop_reason=stop_reason,
        resumed_at_epoch=resumed_at,
        averaged=averaged,
        output_val_mre_mm=output_val["val_mre_mm"] if info.is_main else best["val_mre_mm"],
        output_val_sdr_2mm=output_val["val_sdr_2mm"] if info.is_main else best["val_sdr_2mm"],
        wall_time_s=elapsed,
        seconds_per_epoch=elapsed / max(1, ran),
        images_per_s=float(np.mean([r["images_per_s"] for r in history])) if history else 0.0,
        device=str(device),
        world_size=info.world_size,
        parameters=n_params,
        trainable_parameters=n_trainable,
    )


def _try_average(model, kept: list[dict], best: dict, s: StageParams, validate_model, stage: str):
    """Load the average of the kept per-epoch weights into ``model`` and keep it if it
    validates at least as well as the best epoch (by ``s.select``); else restore the best.
    Returns ``(averaged, validation scores of the model now loaded)``."""
    best_weights = _weights(model)
    states = [load_torch(k["file"], "per-epoch weights", CheckpointError) for k in kept]
    model.load_state_dict(average_state_dicts(states))
    scores = validate_model()
    print(
        f"{stage}: average of the {s.average} {len(kept)} epochs {[k['epoch'] for k in kept]}: "
        f"val MRE {scores['val_mre_mm']:.3f} mm (best single {best['val_mre_mm']:.3f})",
        flush=True,
    )
    if _better(scores[s.select], best[s.select], s.select) or scores[s.select] == best[s.select]:
        return True, scores
    model.load_state_dict(best_weights)
    return False, {k: best[k] for k in HIGHER_IS_BETTER}


def _keep_epoch_weights(model, state_dir: Path, kept: list[dict], epoch: int, score: float, s: StageParams):
    """Keep the weights of the last (``average: last``) or best (``best``) ``average_k`` epochs
    as files for checkpoint averaging; delete the others."""
    if s.average == "none":
        return kept
    path = state_dir / f"epoch_{epoch:04d}.pt"
    weights = _weights(model)
    atomic_write(path, lambda tmp: torch.save(weights, tmp))
    kept = [*kept, {"epoch": epoch, "score": score, "file": str(path)}]
    if s.average == "best":
        sign = -1 if HIGHER_IS_BETTER[s.select] else 1
        kept = sorted(kept, key=lambda k: (sign * k["score"], -k["epoch"]))[: s.average_k]
        kept = sorted(kept, key=lambda k: k["epoch"])
    else:
        kept = kept[-s.average_k :]
    keep = {Path(k["file"]).name for k in kept}
    for f in state_dir.glob("epoch_*.pt"):
        if f.name not in keep:
            f.unlink()
    return kept


def write_history(path: str | Path, history: list[dict[str, Any]]) -> None:
    """Per-epoch history as CSV (a DVC plot), rewritten atomically each epoch."""
    atomic_write(path, lambda tmp: pd.DataFrame(history).to_csv(tmp, index=False, float_format="%.6g"))
