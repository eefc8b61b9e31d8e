"""Multi-process training under ``torchrun`` (DistributedDataParallel).

``torchrun --standalone --nproc-per-node N stages/train.py ...`` sets ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK``; each process trains on its shard of the images
(``DistributedSampler``) and gradients are averaged by DDP. Without those variables (or
with ``WORLD_SIZE=1``) everything is a single process. NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist

from mahtnet.models.device import select_device


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes checkpoints and metrics."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; return this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = select_device(device_name)
    if world <= 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``values`` over processes (a copy; identity in a single process)."""
    values = values.clone()
    if info.enabled:
        dist.all_reduce(values)
    return values


def average_gradients(params, info: DistInfo) -> None:
    """Average the gradients of parameters that DDP does not manage (e.g. the learned loss
    weights) over processes."""
    if not info.enabled:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= info.world_size
