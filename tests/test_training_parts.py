"""The U-Net, checkpoints, the MLflow store location, and parts of training that must fail a
test when they break: keypoints following the augmentation, the warm-up + cosine learning
rate, gradient clipping and gradient checkpointing."""

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO
from torch import nn

from mahtnet.codec import HeatmapCodec
from mahtnet.config import parse_params
from mahtnet.data.dataset import LandmarkDataset, build_augmentation
from mahtnet.data.preprocess import PreparedSet
from mahtnet.decoding import LandmarkReader, TorchBackend
from mahtnet.models.card import CheckpointCard
from mahtnet.models.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from mahtnet.models.factory import build_model
from mahtnet.models.unet import UNet
from mahtnet.paths import repo_root
from mahtnet.training.distributed import DistInfo
from mahtnet.training.kinds import stage_params
from mahtnet.training.loop import StageOutputs, Trainer, TrainerSettings, warmup_cosine
from mahtnet.training.losses import softmax_ce
from mahtnet.training.stages import configure_stage
from mahtnet.training.task import TrainTask

pytestmark = pytest.mark.usefixtures("one_thread")


def test_unet_shapes_and_errors():
    model = UNet(1, 19, channels=4, depth=4)
    out = model(torch.zeros(2, 1, 64, 48))
    assert out.heatmaps.shape == (2, 19, 64, 48)
    assert out.coords.shape == (2, 19, 2) and out.confidence.shape == (2, 19)
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.zeros(1, 1, 60, 48))


def test_unet_gradients_reach_every_parameter():
    model = UNet(1, 3, channels=4, depth=2)
    model(torch.randn(2, 1, 16, 16)).heatmaps.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def _meta():
    return {
        "model": {"name": "unet", "unet_channels": 4, "unet_depth": 2},
        "input_size": [32, 32],
        "heatmap": {"sigma": 2.0, "stride": 1},
        "output_kind": "logits",
        "landmark_names": ["a", "b", "c"],
    }


def test_checkpoint_round_trip_and_corruption(tmp_path):
    model = UNet(1, 3, channels=4, depth=2)
    path = save_checkpoint(tmp_path / "m.pt", model, CheckpointCard.of(_meta()))
    rebuilt, codec, kind = model_from_checkpoint(load_checkpoint(path))
    x = torch.randn(1, 1, 32, 32)
    model.eval()
    torch.testing.assert_close(rebuilt(x), model(x))
    assert codec.input_size == (32, 32) and kind == "logits"
    out = LandmarkReader(TorchBackend(path, "cpu"), batch_size=2).read_images(
        [np.zeros((32, 32), np.uint8)] * 3, [None] * 3
    )
    assert out.final.shape == (3, 3, 2) and out.confidence.shape == (3, 3)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(truncated)
    other = tmp_path / "other.pt"
    torch.save({"state": 1}, other)
    with pytest.raises(CheckpointError, match="not a MAHT-Net checkpoint"):
        load_checkpoint(other)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_repo_root_from_a_dvc_experiment_workspace(tmp_path, monkeypatch):
    monkeypatch.delenv("MAHTNET_ROOT", raising=False)
    workspace = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    workspace.mkdir(parents=True)
    assert repo_root(workspace) == tmp_path / "repo"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "other" / "sub").mkdir()
    assert repo_root(tmp_path / "other" / "sub") == tmp_path / "other"


@functools.cache
def _params():  # parsing params.yaml takes ~0.3 s
    return parse_params(yaml.safe_load((REPO / "params.yaml").read_text()))


def test_augmented_keypoints_lie_on_the_augmented_image_and_its_heatmap_peaks():
    """The training set's augmentation moves the landmarks exactly as it moves the image: image
    ``k`` has a Gaussian blob on landmark ``k`` only; every image is augmented with the same draw
    (the same seed) and the blob found in the augmented image (sub-pixel, the codec's decoder)
    must be the augmented landmark ``k``, and so must the peak of its training target."""
    h, w = 64, 80  # not square: x and y cannot be confused
    points = np.array([[24.0, 20.0], [57.0, 23.0], [41.0, 33.0], [22.0, 44.0], [60.0, 42.0]])
    k, codec = len(points), HeatmapCodec((h, w), sigma=1.5)
    blobs, _ = codec.encode(points)
    tiled = np.tile(points, (k, 1, 1))
    data = PreparedSet(
        ids=np.array([str(i) for i in range(k)]),
        images=np.round(blobs * 200).astype(np.uint8),
        landmarks=tiled,
        landmarks_orig=tiled,
        boxes=np.tile([1.0, 1.0, 0, 0, w, h], (k, 1)),
        spacing=np.ones(k),
        senior_orig=tiled,
        junior_orig=tiled,
        official_orig=tiled,
    )
    # always the affine, with wider ranges than params.yaml's; the photometric transforms move no
    # keypoint and would blur the blob's sub-pixel position
    p = dataclasses.replace(
        _params().train.augment,
        p_affine=1.0,
        rotate_deg=30.0,
        scale=0.2,
        translate=0.1,
        p_brightness_contrast=0.0,
        p_noise=0.0,
    )
    ds = LandmarkDataset(data, codec, build_augmentation(p, seed=0))
    moved = []
    for seed in range(8):
        items = []
        for i in range(k):
            ds.set_epoch_seed(seed)  # the same draw for each one-blob image
            items.append(ds[i])
        landmarks = items[0]["landmarks"].numpy()
        for i, item in enumerate(items):
            np.testing.assert_allclose(item["landmarks"].numpy(), landmarks)  # the same draw
            blob, _ = codec.decode(item["image"].numpy()[0][None].astype(np.float64))
            peaks, _ = codec.decode(item["target"].numpy())
            np.testing.assert_allclose(landmarks[i], blob[0], atol=0.2, err_msg=f"seed {seed} landmark {i}")
            np.testing.assert_allclose(peaks[i], blob[0], atol=0.2, err_msg=f"seed {seed} landmark {i}")
            assert item["visible"].all()
        moved.append(np.abs(landmarks - points).max())
    assert min(moved) > 2.0, f"the augmentation hardly moved the landmarks: {moved}"


def _factor(step: int, total: int, warmup: int) -> float:
    """The schedule's definition: linear warm-up to the base LR, cosine decay to 1 % of it."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / (total - warmup))
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


def test_warmup_cosine_values_and_floor():
    total, warmup = 100, 10
    f = warmup_cosine(total, warmup)
    assert f(0) == pytest.approx(0.1)  # the first step: 1 / warmup of the base LR
    assert f(warmup - 1) == pytest.approx(1.0)  # end of warm-up: the base LR
    assert f(warmup) == pytest.approx(1.0)  # the decay starts at the base LR
    assert f(55) == pytest.approx(0.505)  # midway through the decay: (1 + 0.01) / 2
    assert f(total - 1) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert f(total) == pytest.approx(0.01)  # the floor: 1 % of the base LR
    values = [f(step) for step in range(total + 50)]  # beyond the end too (e.g. more epochs)
    for step, value in enumerate(values):
        assert value == pytest.approx(_factor(step, total, warmup)), step
    assert min(values) >= 0.01 - 1e-12
    assert values[:warmup] == sorted(values[:warmup])  # rising during the warm-up
    assert values[warmup:] == sorted(values[warmup:], reverse=True)  # never rising after it
    assert warmup_cosine(20, 0)(0) == pytest.approx(1.0)  # no warm-up: the decay from step 0


class _Images(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.images = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i]}


def _trainer(tmp_path, epochs: int, **train) -> tuple[Trainer, list[dict]]:
    """The project's Trainer on a tiny U-Net and a huge loss (gradient norm ~1e7): 6 images in
    batches of 2 (3 per epoch), ``train`` overriding params.yaml's ``train`` block. Returns it
    and a list that gets, at each optimizer step, the learning rates and the gradient norm
    before (``raw``) and after clipping (``norm``)."""
    params = _params()
    s = dataclasses.replace(
        stage_params(params, "baseline"), scheduler="cosine", warmup_epochs=1, lr=1e-3, encoder_lr=2e-4
    )
    tp = dataclasses.replace(params.train, batch_size=2, num_workers=0, amp=False, cpu_bf16=False, **train)
    torch.manual_seed(0)
    model = UNet(1, 3, channels=4, depth=2)
    groups, frozen_bn = configure_stage(model, s)
    task = TrainTask(
        name="tiny",
        model=model,
        loss_fn=nn.Module(),
        groups=groups,
        frozen_bn=frozen_bn,
        train_ds=_Images(6),
        loss=lambda out, batch: (out.heatmaps.square().sum() * 1e4, {}),
        validate=lambda m: {},
        probe=torch.zeros(1, 1, 16, 16),
        card=CheckpointCard(
            kind="coarse",
            architecture="unet",
            model={"name": "unet", "unet_channels": 4, "unet_depth": 2},
            input_size=(16, 16),
            sigma=2.0,
            stride=1,
            output_kind="logits",
            landmark_names=("a", "b", "c"),
        ),
        fingerprint="tiny",
    )
    out = StageOutputs(tmp_path / "m.pt", tmp_path / "runs", tmp_path / "h.csv", tmp_path / "g.png")
    trainer = Trainer(task, s, tp, TrainerSettings(epochs, 2, seed=0), out, DistInfo(), torch.device("cpu"))
    steps: list[dict] = []
    trained = [p for g in trainer.optimizer.param_groups for p in g["params"]]

    def norm() -> float:
        return torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in trained if p.grad is not None])
        ).item()

    update = trainer.monitor.update  # called after backward, before clipping

    def before_clipping():
        steps.append({"raw": norm()})
        update()

    def before_step(optimizer, args, kwargs):
        steps[-1].update(norm=norm(), lr={g["name"]: g["lr"] for g in optimizer.param_groups})

    trainer.monitor.update = before_clipping
    trainer.optimizer.register_step_pre_hook(before_step)
    return trainer, steps


def test_trainer_steps_the_learning_rate_by_warmup_cosine(tmp_path):
    """One scheduler step per optimizer step: 3 batches with ``accumulate_steps: 2`` are 2 steps
    an epoch, so 3 epochs are 6 steps, the first 2 (one epoch) the warm-up."""
    trainer, steps = _trainer(tmp_path, epochs=3, accumulate_steps=2)
    for epoch in (1, 2, 3):
        trainer.train_epoch(epoch)
    assert len(steps) == 6
    for i, step in enumerate(steps):
        expected = {"encoder": 2e-4 * _factor(i, 6, 2), "decoder": 1e-3 * _factor(i, 6, 2)}
        assert step["lr"]["encoder"] == pytest.approx(expected["encoder"]), i
        assert step["lr"]["decoder"] == pytest.approx(expected["decoder"]), i
        assert step["lr"]["head"] == pytest.approx(expected["decoder"]), i
    assert [round(s["lr"]["decoder"] / 1e-3, 6) for s in steps[:3]] == [0.5, 1.0, 1.0]
    assert steps[4]["lr"]["decoder"] == pytest.approx(0.505e-3)  # midway through the decay
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 2e-4)  # ends on the floor


def test_trainer_clips_the_gradient_norm_to_grad_clip(tmp_path):
    """Each optimizer step of the trainer sees a total gradient norm of at most ``grad_clip``
    (of a huge one before clipping); ``grad_clip: 0`` leaves the gradient as it is."""
    trainer, steps = _trainer(tmp_path, epochs=1, grad_clip=0.5)
    trainer.train_epoch(1)
    assert len(steps) == 3
    for step in steps:
        assert step["raw"] > 1e3  # a huge gradient before clipping ...
        assert step["norm"] <= 0.5 * (1 + 1e-5)  # ... and none above grad_clip after it
        assert step["norm"] == pytest.approx(0.5, rel=1e-4)
    trainer, steps = _trainer(tmp_path, epochs=1, grad_clip=0.0)  # 0: no clipping
    trainer.train_epoch(1)
    assert all(s["norm"] == s["raw"] > 1e3 for s in steps)


def test_encoder_gradient_checkpointing_gives_the_same_gradients():
    """MAHT-Net with ``encoder_grad_checkpointing`` on and off: same weights and input, same
    output and gradients, and the encoder's blocks really are recomputed in the backward pass.
    The first stage is frozen: a checkpointed block whose input needs no gradient must still
    pass gradients to its parameters (reentrant checkpointing would not)."""
    small = dict(
        encoder_weights=None,
        encoder_frozen_stages=1,
        transformer_layers=1,
        transformer_dim=16,
        transformer_heads=2,
        transformer_pos_size=2,
        decoder_channels=8,
    )
    model_params = dataclasses.replace(_params().model, **small)
    target, visible = HeatmapCodec((32, 32), sigma=1.5).encode(np.array([[8.0, 9.0], [20.0, 25.0]]))
    target, visible = torch.from_numpy(target)[None].expand(2, -1, -1, -1), torch.from_numpy(visible)[None]
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    models = {
        on: build_model("maht_net", dataclasses.replace(model_params, encoder_grad_checkpointing=on), 1, 2)
        for on in (False, True)
    }
    models[True].load_state_dict(models[False].state_dict())
    results = {}
    for on, model in models.items():
        block, calls = model.encoder.backbone.blocks[3], []
        forward = block.forward
        block.forward = lambda *a, forward=forward, calls=calls: calls.append(1) or forward(*a)
        model.train()
        out = model(x)
        softmax_ce(out.heatmaps, target, visible.expand(2, -1)).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        none = [n for n, g in grads.items() if g is None]
        assert not none, f"no gradient reaches {none[:5]} (checkpointing {on})"
        results[on] = out.heatmaps.detach(), grads, len(calls)
    (off_out, off_grads, off_calls), (on_out, on_grads, on_calls) = results[False], results[True]
    assert (off_calls, on_calls) == (1, 2)  # checkpointing on: the block runs again in backward
    torch.testing.assert_close(on_out, off_out)
    assert on_grads.keys() == off_grads.keys()
    differ = [
        n for n, g in off_grads.items() if (on_grads[n] - g).abs().max() > 1e-5 * max(1.0, g.abs().max())
    ]
    assert not differ, f"gradients differ with checkpointing: {differ[:5]}"
