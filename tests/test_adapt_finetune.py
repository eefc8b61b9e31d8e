"""The released refiner mapped from ONNX onto the project's U-Net computes what onnxruntime
computes, and a few fine-tuning steps run and move it (mahtnet.training.finetune_refiner)."""

import numpy as np
import torch

from mahtnet.data.fine import fine_from_images
from mahtnet.decoding.backends import OnnxRefiner, TorchRefiner
from mahtnet.release import RELEASE_DIR
from mahtnet.training.finetune_refiner import FinetuneSettings, finetune_refiner, refiner_from_onnx


def test_refiner_from_onnx_matches_onnxruntime_and_finetunes():
    torch.set_num_threads(1)
    path = RELEASE_DIR / "refiner.onnx"
    model, card = refiner_from_onnx(path)
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (4, 64, 64), dtype=np.uint8)
    landmark = np.array([0, 5, 11, 18])
    ours = TorchRefiner.from_module(model, card, torch.device("cpu"))(patches, landmark)
    np.testing.assert_allclose(ours, OnnxRefiner(path, threads=1)(patches, landmark), atol=1e-4)

    image = rng.integers(0, 256, (300, 240), dtype=np.uint8)
    truth = rng.uniform(60, 180, (1, 19, 2))
    fine = fine_from_images([image], [0.1], card.spacing_mm, truth)
    before = model.head.weight.detach().clone()
    down = model.down[0][0][0].weight.detach().clone()
    settings = FinetuneSettings(steps=2, batch_size=4, train="head")
    info = finetune_refiner(model, card, fine, truth + 5.0, settings)
    assert info["steps"] == 2 and np.isfinite(info["loss_last"])
    assert not torch.equal(model.head.weight, before)
    assert torch.equal(model.down[0][0][0].weight, down)  # frozen outside "head"
