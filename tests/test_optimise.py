"""Deployment optimisations: INT8 quantisation of an exported model, knowledge distillation,
structured pruning."""

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from conftest import tiny_unet_checkpoint

from mahtnet.config import ParamsError, parse_params
from mahtnet.decoding import OnnxBackend
from mahtnet.deploy.export import export_onnx
from mahtnet.deploy.quantize import excluded_nodes, quantize_int8
from mahtnet.landmarks import LANDMARK_NAMES
from mahtnet.training.losses import heatmap_distillation

K = len(LANDMARK_NAMES)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("q")
    return export_onnx(tiny_unet_checkpoint(tmp / "m.pt"), tmp / "m.onnx")


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32), dtype=np.uint8)


def test_int8_runs_keeps_the_card_and_stays_close_to_fp32(onnx_model, tmp_path, params_raw):
    q = parse_params(params_raw).quantize
    out = quantize_int8(onnx_model, tmp_path / "m.int8.onnx", images(8, 0), q)
    fp32, int8 = OnnxBackend(onnx_model), OnnxBackend(out)
    assert dataclasses.replace(fp32.card, file=str(out), sha256=int8.card.sha256) == int8.card
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    x = images(4, 1)
    a, b = fp32(x), int8(x)
    # documented tolerance: the INT8 log-heatmaps correlate with the float ones at > 0.99
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    head = [n.name for n in onnx.load(str(out)).graph.node if n.op_type == "Conv" and "/head/" in n.name]
    assert head, "the head stays a float Conv (quantize.exclude)"


def test_exclusions_and_bad_method(onnx_model, tmp_path, params_raw):
    raw = params_raw
    q = parse_params(raw).quantize
    names = excluded_nodes(onnx.load(str(onnx_model)), q)
    assert names and all("/head/" in n or "/bottleneck/" in n for n in names)  # not up_blocks.0
    raw["quantize"]["calibrate_method"] = "magic"
    with pytest.raises(ParamsError, match="quantize.calibrate_method"):
        quantize_int8(onnx_model, tmp_path / "x.onnx", images(2, 0), parse_params(raw).quantize)
    assert not (tmp_path / "x.onnx").exists()


def test_distillation_is_zero_for_the_teacher_itself_and_positive_otherwise():
    teacher = torch.randn(2, 3, 8, 8)
    assert heatmap_distillation(teacher, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert heatmap_distillation(teacher + 5.0, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-6)  # softmax
    assert heatmap_distillation(torch.randn(2, 3, 8, 8), teacher, 2.0).item() > 0.01
    with pytest.raises(ValueError, match="shape"):
        heatmap_distillation(torch.zeros(2, 3, 4, 4), teacher, 1.0)


def test_distillation_pulls_the_student_towards_the_teacher():
    teacher = torch.full((1, 1, 9, 9), -4.0)
    teacher[0, 0, 6, 2] = 4.0  # the teacher's peak
    student = torch.zeros(1, 1, 9, 9, requires_grad=True)
    optimizer = torch.optim.SGD([student], lr=5.0)
    first = heatmap_distillation(student, teacher, 1.0).item()
    for _ in range(50):
        optimizer.zero_grad()
        heatmap_distillation(student, teacher, 1.0).backward()
        optimizer.step()
    assert heatmap_distillation(student, teacher, 1.0).item() < 0.1 * first
    assert divmod(int(student.detach().argmax()), 9) == (6, 2)
    assert teacher.grad is None


def tiny_maht_net_checkpoint(tmp_path, sparsity=None, params_raw=None):
    """A saved tiny MAHT-Net (random weights), channel-pruned to ``sparsity`` when given."""
    from test_models import TINY

    from mahtnet.config import ModelParams
    from mahtnet.models.card import CheckpointCard
    from mahtnet.models.checkpoint import save_checkpoint
    from mahtnet.models.factory import build_model
    from mahtnet.training.prune import prune_model

    torch.manual_seed(0)
    p = ModelParams(unet_channels=4, unet_depth=2, **TINY)
    model = build_model("maht_net", p, 1, K).eval()
    meta = {
        "model": {"name": "maht_net"} | dataclasses.asdict(p),
        "input_size": [64, 64],
        "heatmap": {"sigma": 2.0, "stride": 1},
        "output_kind": "logits",
        "landmark_names": list(LANDMARK_NAMES),
    }
    if sparsity is not None:
        info = prune_model(model, sparsity, parse_params(params_raw).prune, torch.zeros(1, 1, 64, 64))
        meta["pruned"] = info
    return model, save_checkpoint(tmp_path / f"m{sparsity}.pt", model, CheckpointCard.of(meta))


def test_pruning_shrinks_the_network_which_still_loads_exports_and_predicts(tmp_path, params_raw):
    from mahtnet.models.checkpoint import load_checkpoint, model_from_checkpoint
    from mahtnet.training.prune import count_parameters

    full, _ = tiny_maht_net_checkpoint(tmp_path)
    pruned, path = tiny_maht_net_checkpoint(tmp_path, 0.5, params_raw)
    before, after = count_parameters(full), count_parameters(pruned)
    assert after < 0.5 * before  # channels halve: most layers shrink in both dimensions
    assert load_checkpoint(path)["meta"]["pruned"]["parameters_after"] == after
    assert pruned.head.conv.out_channels == K  # one heatmap per landmark (prune.ignore: head.)
    for a, b in zip(full.bottleneck.parameters(), pruned.bottleneck.parameters(), strict=True):
        if a.dim() != 4:  # the transformer keeps its width (only its 1x1 input projection narrows)
            assert a.shape == b.shape
    narrower = [m for m in pruned.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert narrower and all(m.groups == m.in_channels == m.out_channels for m in narrower)  # depthwise
    rebuilt, _, _ = model_from_checkpoint(load_checkpoint(path))
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x).heatmaps, pruned(x).heatmaps)
    onnx_path = export_onnx(path, tmp_path / "pruned.onnx")
    heatmaps = OnnxBackend(onnx_path)(np.random.default_rng(0).integers(0, 256, (2, 64, 64), dtype=np.uint8))
    assert heatmaps.shape == (2, K, 64, 64) and np.isfinite(heatmaps).all()


def test_prune_params_name_their_key(params_raw):
    raw = params_raw
    raw["prune"]["sparsities_pct"] = [50, 100]
    with pytest.raises(ParamsError, match=r"prune.sparsities_pct\[1\]"):
        parse_params(raw)
    raw["prune"]["sparsities_pct"] = [50]
    raw["prune"]["importance"] = "taylor"
    with pytest.raises(ParamsError, match="prune.importance"):
        parse_params(raw)


def test_peak_memory_is_the_childs_own_not_the_callers(onnx_model):
    from mahtnet.deploy.memory import peak_memory_mb

    ballast = np.ones(2**27)  # 1 GiB resident in this (the calling) process
    got = peak_memory_mb("onnx", onnx_model)
    assert ballast[-1] == 1.0
    assert 0 < got["model_mb"] <= got["peak_rss_mb"] < 700  # the child's, not inherited through fork
