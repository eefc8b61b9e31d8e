"""The training loop, independent of what is trained.

- :class:`TrainTask`: what to train (model, parameter groups, data, loss, validation, the
  checkpoint's metadata and the run's fingerprint); :class:`Trainer` runs one: set-up,
  :meth:`~Trainer.resume`, :meth:`~Trainer.train_epoch`, :meth:`~Trainer.end_epoch`
  (validation, selection, early stopping, checkpoint and state), :meth:`~Trainer.finish`,
  with :class:`Callback` hooks around each epoch (curricula, trial pruning, distillation...).
- Optimisation: AdamW, warm-up + cosine per step or reduce-on-plateau per epoch, gradient
  clipping, gradient accumulation, fp16 autocast + gradient scaling on CUDA (bf16 autocast
  on CPU as an option), DistributedDataParallel under ``torchrun``.
- Memory (:mod:`mahtnet.training.autobatch`): each loaded batch may be split into micro-batches whose
  gradients add up to the batch's: as many as fit the device with ``train.batch_size: auto``,
  and twice as many after an out-of-memory error, when the optimizer step under way is redone.
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
import math
import random
import resource
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from mahtnet.analysis.plots import plot_grad_flow
from mahtnet.config import EarlyStoppingParams, StageParams, TrainParams
from mahtnet.io import atomic_write, load_torch
from mahtnet.models.checkpoint import (
    CheckpointError,
    average_state_dicts,
    load_checkpoint,
    load_train_state,
    save_checkpoint,
    save_train_state,
)
from mahtnet.models.device import autocast
from mahtnet.tracking import Run, metric_group
from mahtnet.training.autobatch import (
    fit_to_device,
    largest_over_processes,
    micro_batch,
    pieces_for,
    split_batch,
)
from mahtnet.training.distributed import DistInfo, all_reduce_sum, average_gradients
from mahtnet.training.monitor import GradientMonitor, activation_stats, component_of
from mahtnet.training.task import TrainTask

HIGHER_IS_BETTER = {"val_mre_mm": False, "val_sdr_2mm": True, "val_loss": False}


@dataclasses.dataclass
class StageOutputs:
    checkpoint: Path  # the stage's model checkpoint (best or averaged)
    state_dir: Path  # resume state and per-epoch weights (scratch, no DVC output: data/runs/)
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


def _reseed(seed: int, epoch: int, generator: torch.Generator, dataset: Dataset) -> None:
    s = seed + 1000 * epoch
    seed_everything(s)
    generator.manual_seed(s)
    if hasattr(dataset, "set_epoch_seed"):
        dataset.set_epoch_seed(s)


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


def _better(a: float, b: float, key: str) -> bool:
    return a > b if HIGHER_IS_BETTER[key] else a < b


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class Callback:
    """Per-epoch hooks of :class:`Trainer` (curricula, pruning, distillation schedules...).
    ``on_epoch_end`` may return a reason to stop training."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, float]) -> str:
        return ""


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    epochs: int
    batch_size: int  # per process
    seed: int  # epoch e reseeds every generator from seed + 1000 * e


class Trainer:
    """Runs a :class:`TrainTask` for ``settings.epochs`` epochs with the stage's schedule
    ``s`` and the shared ``tp``: set-up (here), :meth:`resume`, :meth:`train_epoch`,
    :meth:`end_epoch` (validation, selection, early stopping, checkpoint and state),
    :meth:`finish` (averaging, the written checkpoint); :meth:`fit` runs them in order."""

    def __init__(
        self,
        task: TrainTask,
        s: StageParams,
        tp: TrainParams,
        settings: TrainerSettings,
        out: StageOutputs,
        info: DistInfo,
        device: torch.device,
        run: Run | None = None,
        callbacks: Sequence[Callback] = (),
    ):
        self.task, self.s, self.tp, self.settings, self.out = task, s, tp, settings, out
        self.info, self.device, self.run, self.callbacks = info, device, run, list(callbacks)
        self.model = task.model.to(device)
        task.loss_fn.to(device)
        self.groups = list(task.groups)
        if any(True for _ in task.loss_fn.parameters()):
            self.groups.append(
                {"params": list(task.loss_fn.parameters()), "lr": s.lr, "weight_decay": 0.0, "name": "loss"}
            )
        self.optimizer = torch.optim.AdamW(self.groups, lr=s.lr, weight_decay=tp.weight_decay)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.n_trainable = sum(p.numel() for g in self.groups for p in g["params"])
        self.loader, self.sampler, self.generator = self._train_loader()
        self.scheduler = self._scheduler()
        self.scaler = torch.amp.GradScaler("cuda", enabled=tp.amp and device.type == "cuda")
        self.pieces = self._fit_batch() if tp.batch_size == "auto" else 1  # micro-batches per batch
        self.net = self.model
        if info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.stopper = EarlyStopping(s.early_stopping)
        self.monitor = GradientMonitor(self.model)
        self.state_path = out.state_dir / "last.pt"
        self.history: list[dict[str, Any]] = []
        self.best = {"epoch": 0, "val_mre_mm": math.inf, "val_sdr_2mm": 0.0, "val_loss": math.inf}
        self.kept: list[dict] = []  # per-epoch weight files for averaging: {"epoch", "score", "file"}
        self.grad_means: dict[str, float] = {}
        self.start_epoch, self.resumed_at, self.elapsed, self.stop_reason = 1, 0, 0.0, ""
        self.pending: list[dict] = []  # the loaded batches of the optimizer step under way

    def _train_loader(self) -> tuple[DataLoader, DistributedSampler | None, torch.Generator]:
        ds, info, tp, batch = self.task.train_ds, self.info, self.tp, self.settings.batch_size
        drop_last = len(ds) > batch * info.world_size
        sampler = None
        if info.enabled:
            seed = self.settings.seed
            sampler = DistributedSampler(
                ds, info.world_size, info.rank, shuffle=True, seed=seed, drop_last=drop_last
            )
        generator = torch.Generator()
        loader = DataLoader(
            ds,
            batch_size=batch,
            shuffle=sampler is None,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=tp.num_workers,
            worker_init_fn=_worker_init if tp.num_workers > 0 else None,
            generator=generator,
            pin_memory=self.device.type == "cuda",
        )
        return loader, sampler, generator

    def _scheduler(self):
        s, epochs = self.s, self.settings.epochs
        if s.scheduler == "cosine":
            steps = math.ceil(len(self.loader) / self.tp.accumulate_steps)
            factor = warmup_cosine(epochs * steps, s.warmup_epochs * steps)
            return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=s.plateau_factor, patience=s.plateau_patience
        )

    def fit(self) -> TrainResult:
        self.resume()
        for epoch in range(self.start_epoch, self.settings.epochs + 1):
            for cb in self.callbacks:
                cb.on_epoch_start(self, epoch)
            t0 = time.perf_counter()
            sums, train_time = self.train_epoch(epoch)
            self.end_epoch(epoch, sums, t0, train_time)
            if self.stop_reason:
                if self.info.is_main:
                    print(f"{self.task.name}: early stopping: {self.stop_reason}", flush=True)
                break
        return self.finish()

    def resume(self) -> None:
        """Continue after the last finished epoch of a saved state of the same run."""
        if not self.state_path.exists():
            return
        state = load_train_state(self.state_path)
        name, main = self.task.name, self.info.is_main
        if state["fingerprint"] != self.task.fingerprint:
            if main:
                print(
                    f"{name}: {self.state_path} is from other settings or data; starting afresh", flush=True
                )
            return
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.task.loss_fn.load_state_dict(state["loss_state"])
        self.stopper.load_state_dict(state["early_stopping"])
        _set_rng_state(state["rng"])
        self.history, self.best, self.kept = state["history"], state["best"], state["kept"]
        self.grad_means, self.elapsed = state["grad_means"], state["elapsed_s"]
        self.stop_reason = state["stop_reason"]
        self.pieces = state.get("pieces", self.pieces)  # a fallback after out-of-memory persists
        self.start_epoch = self.resumed_at = state["epoch"] + 1
        if self.stop_reason:
            self.start_epoch = self.settings.epochs + 1  # an early-stopped run is complete
        if main:
            print(f"{name}: resuming after epoch {state['epoch']} from {self.state_path}", flush=True)

    def train_epoch(self, epoch: int) -> tuple[dict[str, float], float]:
        """One pass over the training data; returns the summed loss terms (all processes) and
        the training time."""
        t0 = time.perf_counter()
        _reseed(self.settings.seed, epoch, self.generator, self.task.train_ds)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        self.model.train()
        for m in self.task.frozen_bn:
            m.eval()
        sums: dict[str, float] = defaultdict(float)
        self.optimizer.zero_grad(set_to_none=True)
        name, epochs = self.task.name, self.settings.epochs
        bar = tqdm(self.loader, desc=f"{name} {epoch}/{epochs}", leave=False, mininterval=2.0, disable=None)
        for i, batch in enumerate(bar):
            total, terms, n = self._batch(batch, i, epoch)
            sums["train_loss"] += total.item() * n
            for k, v in terms.items():
                sums[f"train_{k}"] += v.item() * n
            sums["count"] += n
            bar.set_postfix(loss=f"{total.item():.4f}")
        keys = sorted(sums)
        reduced = all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64), self.info)
        return dict(zip(keys, reduced.tolist(), strict=True)), time.perf_counter() - t0

    def _batch(self, batch: dict, i: int, epoch: int):
        """Forward and backward of one batch (in ``self.pieces`` micro-batches); an optimizer
        step every ``accumulate_steps``."""
        step_now = (i + 1) % self.tp.accumulate_steps == 0 or i + 1 == len(self.loader)
        self.pending.append(batch)
        total, terms = self._backward_or_retry(step_now, epoch)
        if step_now:
            self._step()
            self.pending.clear()
        return total, terms, len(batch["image"])

    def _backward_or_retry(self, step_now: bool, epoch: int):
        """Backward of the current batch. Out of memory: halve the micro-batch and redo the
        step's batches so far (their gradient is discarded), until it fits or is one image."""
        todo = self.pending[-1:]
        while True:
            try:
                for batch in todo[:-1]:
                    self._backward(batch, False, epoch)
                return self._backward(todo[-1], step_now, epoch)
            except torch.OutOfMemoryError as err:
                self._halve_micro_batch(err, epoch)
            if self.device.type == "cuda":  # out of the except block: the failed step is released
                torch.cuda.empty_cache()
            todo = self.pending

    def _backward(self, batch: dict, step_now: bool, epoch: int):
        """Forward and backward of ``batch`` in micro-batches, each loss weighted by its share
        of the batch; under DDP gradients are synchronised at the last one of a step only.
        Returns the batch's ``(loss, {term: value})``."""
        tp, pieces, n = self.tp, split_batch(batch, self.pieces), len(batch["image"])
        total, terms = 0.0, defaultdict(float)
        for j, piece in enumerate(pieces):
            last = step_now and j == len(pieces) - 1
            sync = contextlib.nullcontext() if last or not self.info.enabled else self.net.no_sync()
            with sync:
                with autocast(self.device, tp.amp, tp.cpu_bf16):
                    out = self.net(piece["image"].to(self.device, non_blocking=True))
                value, parts = self.task.loss(out, piece)
                if not torch.isfinite(value):
                    raise FloatingPointError(
                        f"{self.task.name}: training loss became {value.item()} at epoch {epoch}"
                    )
                share = len(piece["image"]) / n
                self.scaler.scale(value * share / tp.accumulate_steps).backward()
            total = total + value.detach() * share
            for k, v in parts.items():
                terms[k] = terms[k] + v * share
        return total, dict(terms)

    def _halve_micro_batch(self, err: BaseException, epoch: int) -> None:
        """After an out-of-memory error: discard the step's gradient and halve the micro-batch
        (twice the micro-batches per batch: the batch and the optimizer steps stay)."""
        batch, name = self.settings.batch_size, self.task.name
        micro = micro_batch(batch, self.pieces)
        if micro <= 1 or self.info.enabled:
            where = "under torchrun (no retry)" if self.info.enabled else "with a micro-batch of 1 image"
            raise RuntimeError(
                f"{name}: out of memory {where} at epoch {epoch}: use a smaller train.batch_size, "
                "batch_size auto, or a smaller input or model"
            ) from err
        self.optimizer.zero_grad(set_to_none=True)
        self.pieces = pieces_for(batch, (micro + 1) // 2)
        new = micro_batch(batch, self.pieces)
        print(
            f"{name}: out of memory at epoch {epoch}: micro-batch {micro} -> {new} ({self.pieces} per "
            f"batch of {batch}); the step is redone",
            flush=True,
        )
        if self.run is not None:
            self.run.log_metrics({"monitor/micro_batch": new}, step=epoch)
            self.run.set_tags({"micro_batch": new, "out_of_memory_at_epoch": epoch})

    def _fit_batch(self) -> int:
        """``train.batch_size: auto``: the micro-batches per batch that fit the device (the most
        any process needs), from a probe of the model (:func:`mahtnet.training.autobatch.fit_to_device`)."""
        tp, task, target = self.tp, self.task, self.settings.batch_size
        trainable = [p for g in self.groups for p in g["params"]]
        precision = lambda: autocast(self.device, tp.amp, tp.cpu_bf16)  # noqa: E731
        fit = fit_to_device(task, self.device, target, tp.auto_batch.margin, precision, trainable)
        pieces = largest_over_processes(fit.pieces, self.device)
        micro = micro_batch(target, pieces)
        if self.info.is_main:
            print(
                f"{task.name}: batch_size auto: {pieces} micro-batch(es) of {micro} per batch of {target} "
                f"(step ~{fit.fixed_mb:.0f} MiB + {fit.per_sample_mb:.0f} MiB per image; budget "
                f"{fit.budget_mb:.0f} MiB)",
                flush=True,
            )
        if self.run is not None:
            accumulation = pieces * tp.accumulate_steps
            self.run.log_params({"train.auto_batch.micro_batch": micro, "train.auto_batch.pieces": pieces})
            self.run.log_params({"train.auto_batch.accumulation": accumulation})
            self.run.log_metrics({"monitor/micro_batch": micro}, step=0)
        return pieces

    def _step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        average_gradients(self.task.loss_fn.parameters(), self.info)
        self.monitor.update()
        if self.tp.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for g in self.groups for p in g["params"]], self.tp.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.s.scheduler == "cosine":
            self.scheduler.step()

    def end_epoch(self, epoch: int, sums: dict[str, float], t0: float, train_time: float) -> dict[str, float]:
        """Validate, record the epoch, select, check early stopping and the callbacks, and
        write the best checkpoint, per-epoch weights, history and resume state."""
        val = self.task.validate(self.model)
        if self.s.scheduler == "plateau":
            self.scheduler.step(val["val_mre_mm"])
        norms, self.grad_means = self.monitor.epoch_summary()
        count = sums.pop("count")
        row = {
            "epoch": epoch,
            **{k: v / count for k, v in sums.items()},
            **val,
            **{f"lr_{g['name']}": g["lr"] for g in self.optimizer.param_groups},
            "epoch_time_s": time.perf_counter() - t0,
            "images_per_s": count / train_time,
            "peak_memory_mb": peak_memory_mb(self.device),
            **norms,
            **activation_stats(self.model, self.task.probe),
        }
        row = {k: v if k == "epoch" else float(v) for k, v in row.items()}
        self.history.append(row)
        select = self.s.select
        improved = _better(row[select], self.best[select], select) or self.best["epoch"] == 0
        if improved:
            self.best = {"epoch": epoch, **{k: row[k] for k in HIGHER_IS_BETTER}}
        self.stop_reason = self.stopper.update(row)
        for cb in self.callbacks:
            self.stop_reason = cb.on_epoch_end(self, epoch, row) or self.stop_reason
        self.elapsed += time.perf_counter() - t0
        if self.info.is_main:
            self._write_epoch(epoch, row, improved)
        return row

    def _write_epoch(self, epoch: int, row: dict[str, float], improved: bool) -> None:
        out, s = self.out, self.s
        if improved:
            card = dataclasses.replace(self.task.card, epoch=epoch, val=dict(self.best))
            save_checkpoint(out.state_dir / "best.pt", self.model, card)
        self.kept = _keep_epoch_weights(self.model, out.state_dir, self.kept, epoch, row[s.select], s)
        write_history(out.history, self.history)
        save_train_state(self.state_path, self._state(epoch))
        if self.run is not None:
            self.run.log_metrics({metric_group(k): v for k, v in row.items() if k != "epoch"}, step=epoch)
        print(
            f"{self.task.name} epoch {epoch:3d} loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
            f"val MRE {row['val_mre_mm']:.3f} mm SDR2 {row['val_sdr_2mm']:.1f}% "
            f"lr {self.optimizer.param_groups[0]['lr']:.2e} {row['epoch_time_s']:.1f}s"
            + (" *" if improved else ""),
            flush=True,
        )

    def _state(self, epoch: int) -> dict[str, Any]:
        return {
            "fingerprint": self.task.fingerprint,
            "epoch": epoch,
            "model_state": _weights(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loss_state": self.task.loss_fn.state_dict(),
            "early_stopping": self.stopper.state_dict(),
            "rng": _rng_state(),
            "history": self.history,
            "best": self.best,
            "kept": self.kept,
            "grad_means": self.grad_means,
            "elapsed_s": self.elapsed,
            "stop_reason": self.stop_reason,
            "pieces": self.pieces,
        }

    def finish(self) -> TrainResult:
        """Load the best epoch (or the average of the kept epochs, when it validates at least
        as well) and write the stage's checkpoint and gradient-flow plot."""
        averaged, output_val = False, {k: self.best[k] for k in HIGHER_IS_BETTER}
        if self.info.is_main:
            averaged, output_val = self._write_output()
        history = self.history
        return TrainResult(
            stage=self.task.name,
            best_epoch=self.best["epoch"],
            best_val_mre_mm=self.best["val_mre_mm"],
            best_val_sdr_2mm=self.best["val_sdr_2mm"],
            best_val_loss=self.best["val_loss"],
            epochs_run=len(history),
            stopped_early=bool(self.stop_reason),
            stop_reason=self.stop_reason,
            resumed_at_epoch=self.resumed_at,
            averaged=averaged,
            output_val_mre_mm=output_val["val_mre_mm"],
            output_val_sdr_2mm=output_val["val_sdr_2mm"],
            wall_time_s=self.elapsed,
            seconds_per_epoch=self.elapsed / max(1, len(history)),
            images_per_s=float(np.mean([r["images_per_s"] for r in history])) if history else 0.0,
            device=str(self.device),
            world_size=self.info.world_size,
            parameters=self.n_params,
            trainable_parameters=self.n_trainable,
        )

    def _write_output(self) -> tuple[bool, dict[str, float]]:
        model, out, s, best = self.model, self.out, self.s, self.best
        model.load_state_dict(load_checkpoint(out.state_dir / "best.pt")["model_state"])
        averaged, output_val = False, {k: best[k] for k in HIGHER_IS_BETTER}
        if s.average != "none" and len(self.kept) >= 2:
            validate_model = lambda: self.task.validate(model)  # noqa: E731
            averaged, output_val = _try_average(model, self.kept, best, s, validate_model, self.task.name)
        epochs_kept = [k["epoch"] for k in self.kept] if averaged else [best["epoch"]]
        card = dataclasses.replace(
            self.task.card, epoch=best["epoch"], val=output_val, averaged_epochs=epochs_kept
        )
        save_checkpoint(out.checkpoint, model, card)
        if self.grad_means:
            components = {n: component_of(model, n) for n in self.grad_means}
            plot_grad_flow(self.grad_means, components, out.grad_flow)
        write_history(out.history, self.history)
        return averaged, output_val


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
