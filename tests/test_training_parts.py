"""The U-Net, checkpoints and the MLflow store location."""

import numpy as np
import pytest
import torch

from mahtnet.decoding import LandmarkReader, TorchBackend
from mahtnet.models.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from mahtnet.models.unet import UNet
from mahtnet.paths import repo_root


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
    path = save_checkpoint(tmp_path / "m.pt", model, _meta())
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
