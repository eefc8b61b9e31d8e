"""Trained networks as MLflow models (mahtnet.deploy.mlflow_models, mahtnet.tracking): logged into a
run, registered per architecture, loadable with mlflow.pytorch / mlflow.pyfunc, and giving the
network's own output."""

import mlflow
import numpy as np
import pytest
import torch
from conftest import edited

from mahtnet.config import TrackingParams, parse_params, to_dict
from mahtnet.deploy.mlflow_models import deployable, log_onnx_export, log_stage_model, sha256
from mahtnet.landmarks import LANDMARK_NAMES
from mahtnet.models.card import CheckpointCard
from mahtnet.models.checkpoint import save_checkpoint
from mahtnet.models.factory import build_model, build_refiner
from mahtnet.models.readout import HeatmapNet
from mahtnet.tracking import log_onnx_model, log_torch_model, start_run

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 32


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Tracking params of a sqlite store shared by this module's tests (creating one takes seconds);
    artifacts in its folder's mlartifacts."""
    folder = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        yield TrackingParams(experiment="test", uri=None, log_models=True)


@pytest.fixture
def params(params_raw):
    raw = edited(params_raw, "model.unet_channels", 4)
    raw = edited(raw, "model.unet_depth", 2)
    raw = edited(raw, "preprocess.height", SIZE)
    return parse_params(edited(raw, "preprocess.width", SIZE))


def unet_checkpoint(params, path):
    """A tiny U-Net checkpoint with the meta a baseline stage writes."""
    torch.manual_seed(0)
    model = build_model("unet", params.model)
    meta = {
        "model": {"name": "unet", **to_dict(params.model)},
        "input_size": [SIZE, SIZE],
        "heatmap": {"sigma": 2.0, "stride": 1},
        "output_kind": "logits",
        "landmark_names": list(LANDMARK_NAMES),
        "stage": "baseline",
        "params": to_dict(params),
    }
    return save_checkpoint(path, model, CheckpointCard.of(meta))


def refiner_checkpoint(params, path, coarse):
    torch.manual_seed(1)
    meta = {
        "kind": "refiner",
        "model": {"name": "refiner", "channels": 4, "depth": 2},
        "patch_size": 16,
        "sigma": 1.5,
        "spacing_mm": 0.5,
        "coarse_checkpoint": str(coarse),
        "landmark_names": list(LANDMARK_NAMES),
        "params": to_dict(params),
    }
    return save_checkpoint(path, build_refiner(len(LANDMARK_NAMES), 4, 2), CheckpointCard.of(meta))


def own_output(net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net.eval()(torch.from_numpy(x)).numpy()


def test_torch_model_loads_back_with_the_same_output_and_versions_count_up(store):
    torch.manual_seed(0)
    net = HeatmapNet(build_refiner(3, 4, 2), "logits")
    example = np.zeros((2, 1, SIZE, SIZE), np.float32)
    with start_run(store, "train_x", {}) as run:
        first = log_torch_model(
            run, net, example, "tiny", {"stage": "one"}, {"landmark_names": ["a", "b", "c"]}
        )
        second = log_torch_model(run, net, example, "tiny", {"stage": "two"})
    assert (first, second) == (1, 2)
    x = np.random.default_rng(0).random((3, 1, SIZE, SIZE), dtype=np.float32)  # another batch size
    expected = own_output(net, x)
    assert expected.shape == (3, 3, SIZE, SIZE)
    loaded = mlflow.pytorch.load_model("models:/tiny/1")
    np.testing.assert_allclose(loaded(torch.from_numpy(x)).detach().numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(mlflow.pyfunc.load_model("models:/tiny/2").predict(x), expected, atol=1e-5)
    version = mlflow.MlflowClient().get_model_version("tiny", "2")
    assert version.tags["stage"] == "two" and version.tags["model_format"] == "pytorch pt2"
    info = mlflow.models.get_model_info("models:/tiny/1")
    assert info.metadata == {"landmark_names": ["a", "b", "c"]}
    assert info.signature.inputs.inputs[0].shape == (-1, 1, SIZE, SIZE)
    assert info.signature.outputs.inputs[0].shape == (-1, 3, SIZE, SIZE)


def test_a_failed_registration_or_a_wrong_example_raises(store):
    net = HeatmapNet(build_refiner(3, 4, 2), "logits")
    with start_run(store, "train_x", {}) as run:
        with pytest.raises(mlflow.exceptions.MlflowException, match="name"):
            log_torch_model(run, net, np.zeros((2, 1, SIZE, SIZE), np.float32), "")
        with pytest.raises(
            ValueError, match=r"float32 network input \(B, C, H, W\), got uint8 \(1, 32, 32\)"
        ):
            log_onnx_model(run, "unused.onnx", np.zeros((1, SIZE, SIZE), np.uint8), "tiny")


def test_stage_checkpoint_is_registered_under_its_architecture_with_tags(store, params, tmp_path):
    checkpoint = unet_checkpoint(params, tmp_path / "baseline.pt")
    with start_run(store, "train_baseline", {}) as run:
        name, version = log_stage_model(run, checkpoint, tags={"val_mre_mm": 1.5})
        run.log_metrics({"output_val_mre_mm": 1.5})  # the stage's summary, after the model
    assert name == "unet"
    tags = mlflow.MlflowClient().get_model_version(name, str(version)).tags
    assert tags["checkpoint_sha256"] == sha256(checkpoint) and tags["input_size"] == f"{SIZE}x{SIZE}"
    assert tags["stage"] == "baseline" and tags["val_mre_mm"] == "1.5"
    assert tags["landmark_names"].split(",") == list(LANDMARK_NAMES)
    assert [tags[k] for k in ("heatmap_sigma", "heatmap_stride", "output_kind")] == ["2.0", "1", "logits"]
    assert tags["training_data"].startswith("synthetic, split TrainingData")  # no machine path
    info = mlflow.models.get_model_info(f"models:/unet/{version}")
    assert info.metadata["input_size"] == [SIZE, SIZE] and info.metadata["architecture"] == "unet"
    assert [m.key for m in mlflow.get_logged_model(info.model_id).metrics] == ["output_val_mre_mm"]


def test_refiner_is_registered_per_coarse_architecture(store, params, tmp_path):
    coarse = unet_checkpoint(params, tmp_path / "baseline.pt")
    refiner = refiner_checkpoint(params, tmp_path / "refine_baseline.pt", coarse)
    with start_run(store, "train_refine_baseline", {}) as run:
        name, version = log_stage_model(run, refiner)
    assert name == "refiner_unet"
    tags = mlflow.MlflowClient().get_model_version(name, str(version)).tags
    assert [tags[k] for k in ("stage", "input_size", "coarse_architecture")] == ["refine", "16x16", "unet"]
    patches = np.random.default_rng(1).random((4, 1, 16, 16), dtype=np.float32)
    out = mlflow.pyfunc.load_model(f"models:/{name}/{version}").predict(patches)
    np.testing.assert_allclose(out, own_output(deployable(refiner).net, patches), atol=1e-5)


def test_onnx_export_registers_a_version_that_pyfunc_runs(store, params, tmp_path):
    checkpoint = unet_checkpoint(params, tmp_path / "baseline.pt")
    net = deployable(checkpoint).net
    onnx_path = tmp_path / "baseline.onnx"
    axes = {"images": {0: "batch"}, "log_heatmaps": {0: "batch"}}
    torch.onnx.export(
        net,
        (torch.zeros(1, 1, SIZE, SIZE),),
        str(onnx_path),
        dynamo=False,
        opset_version=17,
        input_names=["images"],
        output_names=["log_heatmaps"],
        dynamic_axes=axes,
    )
    with start_run(store, "export", {}) as run:
        name, version = log_onnx_export(run, checkpoint, onnx_path, tags={"opset": 17})
    x = np.random.default_rng(2).random((2, 1, SIZE, SIZE), dtype=np.float32)
    assert name == "unet"
    out = mlflow.pyfunc.load_model(f"models:/unet/{version}").predict(x)
    np.testing.assert_allclose(out["log_heatmaps"], own_output(net, x), atol=1e-4)
    tags = mlflow.MlflowClient().get_model_version("unet", str(version)).tags
    assert tags["model_format"] == "onnx" and tags["opset"] == "17"
