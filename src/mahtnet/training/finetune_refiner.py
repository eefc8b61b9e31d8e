"""Fine-tuning the released refiner on a clinic's ``k`` corrected images (a pilot of issue 40's
"fine-tune instead of offsets" comparison; ``scripts/adapt_finetune_pilot.py`` runs it).

The release ships the refiner as ONNX only, with BatchNorm fused into the convolutions at export.
:func:`refiner_from_onnx` maps those weights onto the project's own refiner U-Net
(:func:`mahtnet.models.factory.build_refiner`) with each BatchNorm replaced by an identity and
each convolution given the fused bias, so the PyTorch module computes what ``refiner.onnx``
computes (checked against onnxruntime by the pilot and the test) and can be trained.

:func:`finetune_refiner` trains it on patches of the ``k`` images cut around the base model's
positions *before* refinement (shape-consistent decoding, where the refiner meets them at test
time) plus a Gaussian jitter, rotated, zoomed and brightness/contrast-augmented
(:class:`mahtnet.training.refiner.PatchDataset`), the targets being the clinic's corrected
landmarks; the loss is the refiner's own (:func:`mahtnet.training.refiner.refine_loss`).
:func:`refine` reads refined landmarks with the fine-tuned module through the project's decoding
(:func:`mahtnet.decoding.reader.refine_landmarks`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mahtnet.data.fine import FineSet
from mahtnet.decoding.backends import OnnxRefiner, TorchRefiner
from mahtnet.decoding.reader import refine_landmarks
from mahtnet.models.card import ModelCard
from mahtnet.models.factory import build_refiner
from mahtnet.models.layers import ConvBNReLU
from mahtnet.models.unet import UNet
from mahtnet.training.refiner import JitterModel, PatchDataset, refine_loss

TRAINABLE = ("all", "decoder", "head")  # which parameters fine-tuning moves ("decoder": not the down path)


def refiner_from_onnx(path: str | Path) -> tuple[UNet, ModelCard]:
    """The refiner U-Net of an exported ``refiner.onnx`` (BatchNorm fused: each BatchNorm an
    identity, each convolution with the fused bias) in eval mode, and the file's card."""
    import onnx
    from onnx import numpy_helper

    card = OnnxRefiner(path, threads=1).card
    graph = onnx.load(str(path)).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    first = init[convs[0].input[1]]
    head = init[convs[-1].input[1]]
    channels, num_landmarks = int(first.shape[0]), int(head.shape[0])
    depth = sum(n.op_type == "ConvTranspose" for n in convs)
    model = build_refiner(num_landmarks, channels, depth)
    for block in [m for m in model.modules() if isinstance(m, ConvBNReLU)]:
        conv = block[0]
        block[0] = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding, bias=True
        )
        block[1] = nn.Identity()
    modules = dict(model.named_modules())
    state = {}
    for node in convs:  # node names: "/model/<module path>/Conv"
        name = node.name.split("/")[-2]
        if name not in modules or len(node.input) != 3:
            raise ValueError(f"{path}: ONNX node {node.name} does not map onto the refiner U-Net")
        state[f"{name}.weight"] = torch.from_numpy(init[node.input[1]].copy())
        state[f"{name}.bias"] = torch.from_numpy(init[node.input[2]].copy())
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise ValueError(f"{path}: no ONNX weights for {sorted(missing)[:3]}")
    model.load_state_dict(state)
    return model.eval(), card


@dataclasses.dataclass(frozen=True)
class FinetuneSettings:
    """One fine-tuning recipe: ``steps`` AdamW steps of ``batch_size`` patches at ``lr`` (cosine
    decay to 0), patch centres at the pre-refinement positions plus ``N(0, jitter_mm^2)`` per
    axis, rotation ``U(-rotate_deg, rotate_deg)``, zoom ``U(1 - zoom, 1 + zoom)``, intensity
    ``brightness`` / ``contrast``; ``train``: which parameters move (:data:`TRAINABLE`)."""

    steps: int = 100
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    jitter_mm: float = 1.0
    rotate_deg: float = 10.0
    zoom: float = 0.1
    brightness: float = 0.1
    contrast: float = 0.1
    train: str = "all"
    seed: int = 0

    def __post_init__(self):
        if self.train not in TRAINABLE:
            raise ValueError(f"train: one of {', '.join(TRAINABLE)}, got {self.train!r}")
        if self.steps < 0 or self.batch_size < 1 or self.lr < 0:
            raise ValueError("need steps >= 0, batch_size >= 1 and lr >= 0")


def _trainable(model: UNet, which: str) -> list[nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(False)
    prefixes = {"all": ("",), "decoder": ("bottleneck.", "up.", "up_blocks.", "head."), "head": ("head.",)}
    chosen = [p for n, p in model.named_parameters() if n.startswith(prefixes[which])]
    for p in chosen:
        p.requires_grad_(True)
    return chosen


def finetune_refiner(
    model: UNet, card: ModelCard, fine: FineSet, centres_orig: np.ndarray, settings: FinetuneSettings
) -> dict:
    """Fine-tune ``model`` in place on ``fine`` (its ``landmarks_orig``: the corrected landmarks)
    with patches around ``centres_orig (k, K, 2)`` (original px: the positions before
    refinement); returns the seconds it took and the loss of the first and last tenth of steps."""
    s = settings
    jitter = JitterModel(np.full((fine.num_landmarks, 2), s.jitter_mm))
    ds = PatchDataset(
        fine,
        card.input_size[0],
        card.sigma,
        jitter,
        s.brightness,
        s.contrast,
        s.seed,
        centres_orig=centres_orig,
        rotate_deg=s.rotate_deg,
        zoom=s.zoom,
    )
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    params = _trainable(model, s.train)
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + np.cos(np.pi * min(step, s.steps) / max(s.steps, 1)))
    )
    model.train()
    losses = []
    start = time.perf_counter()
    order = np.empty(0, dtype=np.int64)
    for step in range(s.steps):
        if len(order) < s.batch_size:  # shuffled epochs of the (image, landmark) pairs
            order = np.concatenate([order, rng.permutation(len(ds))])
        idx, order = order[: s.batch_size], order[s.batch_size :]
        ds.set_epoch_seed(s.seed * 1_000_003 + step)  # fresh augmentation each step
        items = [ds[int(j)] for j in idx]
        batch = {
            key: torch.stack([it[key] for it in items]) for key in ("image", "target", "landmark", "visible")
        }
        logits = model(batch["image"]).heatmaps
        loss = refine_loss(logits, batch["landmark"], batch["target"], batch["visible"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.item()))
    seconds = time.perf_counter() - start
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    tenth = max(1, len(losses) // 10)
    return {
        "seconds": seconds,
        "steps": s.steps,
        "loss_first": float(np.mean(losses[:tenth])) if losses else None,
        "loss_last": float(np.mean(losses[-tenth:])) if losses else None,
    }


def refine(model: UNet, card: ModelCard, fine: FineSet, points_orig: np.ndarray, batch_size: int = 128):
    """Refined landmarks ``(N, K, 2)`` original px of ``fine``'s images from ``points_orig``
    (the project's decoding: :func:`mahtnet.decoding.reader.refine_landmarks`)."""
    with torch.no_grad():
        backend = TorchRefiner.from_module(model, card, torch.device("cpu"))
        return refine_landmarks(backend, fine, points_orig, batch_size)[0]
