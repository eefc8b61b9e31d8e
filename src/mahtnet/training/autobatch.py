"""Memory controls of training: ``train.batch_size: auto`` and micro-batches.

- A configured (loaded) batch of ``target`` images is split into ``pieces`` micro-batches
  (:func:`split_batch`) whose losses, each weighted by its share of the batch, are summed by
  gradient accumulation: the optimizer sees the gradient of the whole batch.
- :func:`fit_batch` picks the largest micro-batch that fits: the peak memory of one training
  step (forward, loss, backward; :func:`step_peak_mb`) is measured at batch 1 and 2 (after an
  unmeasured warm-up step) and extrapolated linearly, ``fixed + b * per_sample``, with the
  AdamW state (two copies of the trainable weights, allocated at the first step) added to
  ``fixed``; the largest ``b <= target`` within ``(1 - margin)`` of the free memory is then
  measured itself (halved while it does not fit). :func:`fit_to_device` runs it on the real
  model and images.
- Rounding: ``pieces = ceil(target / fitted)``; the micro-batches differ in size by at most one
  and none is larger than ``fitted`` (target 4, fitted 3: two micro-batches of 2).
- Peak memory: CUDA ``max_memory_allocated`` after ``reset_peak_memory_stats``; CPU (Linux) the
  resident set's high-water mark ``VmHWM`` after resetting it through ``/proc/self/clear_refs``.
  Free memory: CUDA ``mem_get_info`` plus the allocator's cached blocks; CPU ``psutil``'s
  available memory.
- The probe leaves the weights, buffers (BatchNorm statistics), gradients, train / eval modes
  and random generators as they were (:func:`preserved`): a run stays reproducible.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import math
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

if TYPE_CHECKING:
    from mahtnet.training.task import TrainTask

OUT_OF_MEMORY = (torch.OutOfMemoryError, MemoryError)


@dataclasses.dataclass(frozen=True)
class AutoBatch:
    target: int  # the configured batch, kept
    fitted: int  # the largest batch that fits (<= target)
    pieces: int  # micro-batches per configured batch: ceil(target / fitted)
    micro_batch: int  # the largest micro-batch: ceil(target / pieces) <= fitted
    fixed_mb: float  # estimated step peak at batch 0 (MiB), optimizer state included
    per_sample_mb: float  # estimated growth per image (MiB)
    budget_mb: float  # (1 - margin) * free memory (MiB)


def split_batch(batch: dict, pieces: int) -> list[dict]:
    """``batch`` (a dict of tensors or sequences of equal length B) as ``min(pieces, B)``
    micro-batches whose sizes differ by at most one; ``[batch]`` itself when ``pieces`` is 1."""
    if pieces <= 1:
        return [batch]
    chunks = torch.arange(len(batch["image"])).tensor_split(min(pieces, len(batch["image"])))
    return [{k: v[c[0] : c[-1] + 1] for k, v in batch.items()} for c in chunks]


def micro_batch(batch: int, pieces: int) -> int:
    """The largest micro-batch of a batch of ``batch`` split in ``pieces``."""
    return math.ceil(batch / pieces)


def pieces_for(batch: int, micro: int) -> int:
    """Micro-batches of at most ``micro`` images that a batch of ``batch`` needs."""
    return math.ceil(batch / max(1, micro))


def _proc_status_mb(field: str) -> float:
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return math.nan  # not Linux: the peak cannot be reset


def _release_cpu_memory() -> None:
    """Return freed heap memory to the OS (glibc), so the resident set is what is in use."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak(device: torch.device) -> float:
    """Reset the peak-memory counter of ``device``; return the memory in use now (MiB)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    _release_cpu_memory()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    return _proc_status_mb("VmRSS")


def peak_mb(device: torch.device) -> float:
    """Peak memory since :func:`reset_peak` (MiB): CUDA tensors, or the CPU resident set."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _proc_status_mb("VmHWM")


def free_mb(device: torch.device) -> float:
    """Memory a training step may still take (MiB)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return (free + cached) / 2**20
    return psutil.virtual_memory().available / 2**20


def step_peak_mb(step: Callable[[], None], device: torch.device) -> float:
    """Memory that ``step()`` adds at its peak over what was in use before it (MiB);
    ``inf`` when it runs out of memory."""
    before = reset_peak(device)
    try:
        step()
        peak = peak_mb(device) - before
    except OUT_OF_MEMORY:
        peak = math.inf
    if device.type == "cuda":  # after the except block, which holds the failed step's tensors
        torch.cuda.empty_cache()
    return peak


def fit_batch(
    measure: Callable[[int], float], free: float, target: int, margin: float, state_mb: float = 0.0
) -> AutoBatch:
    """The largest batch ``b <= target`` whose step peak ``measure(b)`` (MiB, ``inf``: out of
    memory) plus ``state_mb`` (optimizer state) stays within ``(1 - margin) * free`` MiB;
    ``measure`` runs at 1, 2 and the extrapolated batch (halved until it fits); ``nan``
    (memory not measurable) keeps the whole batch."""
    budget = (1.0 - margin) * free
    if target <= 1:
        return AutoBatch(target, 1, 1, 1, math.nan, math.nan, budget)
    p1, p2 = measure(1), measure(2)
    if math.isnan(p1) or math.isnan(p2):  # not measurable (no /proc): keep the batch
        return AutoBatch(target, target, 1, target, math.nan, math.nan, budget)
    if not math.isfinite(p2):  # batch 2 ran out of memory
        return AutoBatch(target, 1, target, 1, p1 + state_mb, math.inf, budget)
    per_sample = max(p2 - p1, 0.0)
    fixed = p1 - per_sample + state_mb
    if fixed + 2 * per_sample > budget:
        fitted = 1
    elif per_sample == 0:
        fitted = target
    else:
        fitted = int(min(target, (budget - fixed) // per_sample))
    while fitted > 2 and measure(fitted) + state_mb > budget:
        fitted //= 2
    pieces = pieces_for(target, fitted)
    return AutoBatch(target, fitted, pieces, micro_batch(target, pieces), fixed, per_sample, budget)


def _rng_states() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _set_rng_states(states: tuple) -> None:
    python, numpy, cpu, cuda = states
    random.setstate(python)
    np.random.set_state(numpy)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def preserved(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Run a probe on ``modules``: afterwards their buffers (BatchNorm statistics), train / eval
    modes and the random generators are restored and their gradients are ``None``. (The probe
    takes no optimizer step: the weights do not change.)"""
    buffers = [{k: v.clone() for k, v in m.named_buffers()} for m in modules]
    modes = [[(sub, sub.training) for sub in m.modules()] for m in modules]
    rng = _rng_states()
    try:
        yield
    finally:
        for m, saved, flags in zip(modules, buffers, modes, strict=True):
            with torch.no_grad():
                for k, v in m.named_buffers():
                    v.copy_(saved[k])
            for sub, flag in flags:
                sub.train(flag)
            for p in m.parameters():
                p.grad = None
        _set_rng_states(rng)


def largest_over_processes(value: int, device: torch.device) -> int:
    """The largest ``value`` of all processes under torchrun (so that every process splits
    its batches alike); ``value`` itself in a single process."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return value
    t = torch.tensor([value], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def sample_batch(dataset: Dataset, size: int) -> dict:
    """A batch of ``size`` items of ``dataset`` (repeated when it is smaller)."""
    return default_collate([dataset[i % len(dataset)] for i in range(size)])


def fit_to_device(
    task: TrainTask,
    device: torch.device,
    target: int,
    margin: float,
    precision: Callable[[], contextlib.AbstractContextManager],
    trainable: Sequence[nn.Parameter],
) -> AutoBatch:
    """:func:`fit_batch` with training steps of ``task.model`` (on ``device``, in training mode,
    ``task.frozen_bn`` in eval, under the ``precision()`` autocast) on images of
    ``task.train_ds`` (the real input size) with ``task.loss``; the AdamW state of
    ``trainable`` is added. The model and the random state are left as they were."""
    model, loss_fn = task.model, task.loss_fn

    def measure(b: int) -> float:
        batch = sample_batch(task.train_ds, b)
        for p in [*model.parameters(), *loss_fn.parameters()]:
            p.grad = None  # the previous probe's gradient is not in use

        def step() -> None:
            with precision():
                out = model(batch["image"].to(device))
            total, _ = task.loss(out, batch)
            total.backward()

        return step_peak_mb(step, device)

    state_mb = 2 * sum(p.numel() * p.element_size() for p in trainable) / 2**20  # AdamW moments
    with preserved([model, loss_fn]):
        model.train()
        for m in task.frozen_bn:
            m.eval()
        measure(1)  # warm-up: one-time allocations (kernels, workspaces) are not per-image memory
        return fit_batch(measure, free_mb(device), target, margin, state_mb)
