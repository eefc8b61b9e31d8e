"""``mahtnet predict`` on new X-rays (JPEG, DICOM, folders with bad files) and ONNX export
parity, with a tiny untrained U-Net (what is checked is the plumbing, not accuracy)."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import tiny_refiner_checkpoint, tiny_unet_checkpoint, write_dicom

from mahtnet.cli import main
from mahtnet.data.preprocess import Letterbox, letterbox_image
from mahtnet.decoding import OnnxBackend, TorchBackend
from mahtnet.deploy.export import export_onnx
from mahtnet.landmarks import LANDMARK_NAMES

K = len(LANDMARK_NAMES)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    data = {
        "dataset": "synthetic",
        "root": "data/synthetic",
        "train_split": "T",
        "gt": "mean",
        "val_fraction": 0.1,
    }
    return tiny_unet_checkpoint(tmp_path_factory.mktemp("model") / "unet.pt", (64, 48), {"data": data})


@pytest.fixture(scope="module")
def onnx_model(checkpoint):
    return export_onnx(checkpoint, checkpoint.with_suffix(".onnx"))


def xray(seed: int, h: int = 120, w: int = 100) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 255, (h, w), dtype=np.uint8), (0, 0), 3)
    return cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX)


def test_onnx_export_matches_pytorch(checkpoint, onnx_model):
    images = np.stack([letterbox_image(xray(i), 64, 48)[0] for i in range(3)])
    ref, got = TorchBackend(checkpoint, "cpu"), OnnxBackend(onnx_model)
    assert got.card.input_size == (64, 48) and got.card.landmark_names == LANDMARK_NAMES
    assert got.card.training_data == ref.card.training_data
    np.testing.assert_allclose(got(images), ref(images), atol=1e-4)
    codec = ref.card.codec()
    box = Letterbox(0.4, 0.4, 4, 8, 100, 120)  # any letterbox: the difference in original px
    diff = box.to_original(codec.decode(got(images), True)[0]) - box.to_original(
        codec.decode(ref(images), True)[0]
    )
    assert np.abs(diff).max() <= 0.05


def test_predict_jpeg_and_dicom(checkpoint, tmp_path):
    cv2.imwrite(str(tmp_path / "a.jpg"), xray(1))
    write_dicom(tmp_path / "b.dcm", xray(2).astype(np.uint16) * 257, PixelSpacing=[0.1, 0.1])
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "a.jpg"), str(tmp_path / "b.dcm"), "--model", str(checkpoint),
                 "--out", str(out), "--isbi-txt", "--device", "cpu"]) == 0  # fmt: skip
    a, b = (json.loads((out / f"{n}.json").read_text()) for n in "ab")
    assert a["pixel_spacing_mm"] is None and a["pixel_spacing_source"] is None  # never a silent guess
    assert all(r["x_mm"] is None for r in a["landmarks"]) and a["measurements"]["MW"]["value"] is None
    assert b["pixel_spacing_mm"] == pytest.approx(0.1) and b["pixel_spacing_source"] == "DICOM PixelSpacing"
    first = b["landmarks"][0]
    assert first["name"] == "sella" and first["x_mm"] == pytest.approx(first["x_px"] * 0.1)
    assert np.isfinite([first["x_px"], first["y_px"]]).all()  # untrained: anywhere on the canvas
    assert set(b["measurements"]) == {"ANB", "SNB", "SNA", "ODI", "APDI", "FHI", "FMA", "MW"}
    assert b["model"]["sha256"] and b["model"]["format"] == "pytorch"
    assert (out / "a.png").is_file() and cv2.imread(str(out / "a.png")).shape == (120, 100, 3)
    assert len((out / "b.txt").read_text().splitlines()) == K
    csv = pd.read_csv(out / "landmarks.csv")
    assert len(csv) == 2 * K and set(csv.landmark) == set(LANDMARK_NAMES)


def test_a_model_trained_on_synthetic_images_is_flagged(checkpoint, onnx_model, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), xray(3))
    for model in (checkpoint, onnx_model):  # the card travels into the ONNX file
        assert (
            main(["predict", str(tmp_path / "a.png"), "--model", str(model), "--out", str(tmp_path / "o")])
            == 0
        )
        err = capsys.readouterr().err
        assert f"warning: {model}: trained on synthetic images" in err
    real = tiny_unet_checkpoint(tmp_path / "real.pt", (64, 48), {"data": {"dataset": "isbi2015", "root": "x",
                                "train_split": "T", "gt": "mean", "val_fraction": 0.1}})  # fmt: skip
    assert main(["predict", str(tmp_path / "a.png"), "--model", str(real), "--out", str(tmp_path / "o")]) == 0
    assert "synthetic" not in capsys.readouterr().err


def test_pixel_spacing_option_wins(checkpoint, tmp_path):
    write_dicom(tmp_path / "b.dcm", xray(2).astype(np.uint16) * 257, PixelSpacing=[0.1, 0.1])
    out = tmp_path / "out"
    main(
        [
            "predict",
            str(tmp_path / "b.dcm"),
            "--model",
            str(checkpoint),
            "--out",
            str(out),
            "--pixel-spacing",
            "0.2",
        ]
    )
    doc = json.loads((out / "b.json").read_text())
    assert doc["pixel_spacing_mm"] == 0.2 and doc["pixel_spacing_source"] == "--pixel-spacing"


def test_onnx_and_pytorch_predict_the_same(checkpoint, onnx_model, tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), xray(3))
    docs = []
    for model in (checkpoint, onnx_model):
        out = tmp_path / model.suffix[1:]
        assert (
            main(
                ["predict", str(tmp_path / "a.png"), "--model", str(model), "--out", str(out), "--no-overlay"]
            )
            == 0
        )
        docs.append(json.loads((out / "a.json").read_text()))
        assert not (out / "a.png").exists()
    pts = [np.array([[r["x_px"], r["y_px"]] for r in d["landmarks"]]) for d in docs]
    assert np.abs(pts[0] - pts[1]).max() <= 0.05
    assert docs[1]["model"]["format"] == "onnx"


def test_folder_with_a_corrupt_file(checkpoint, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.jpg", "sub/c.png"):
        cv2.imwrite(str(folder / name), xray(4))
    (folder / "b.jpg").write_text("this is not an image\n")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "mahtnet",
        "predict",
        str(folder),
        "--model",
        str(checkpoint),
        "--out",
        str(out),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert any("b.jpg" in ln for ln in errors) and "Traceback" not in result.stderr
    assert (out / "a.json").is_file() and (out / "c.json").is_file() and not (out / "b.json").exists()
    assert len(pd.read_csv(out / "landmarks.csv")) == 2 * K


def test_empty_folder_and_missing_model(checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as stop:
        main(["predict", str(tmp_path / "empty"), "--model", str(checkpoint), "--out", str(tmp_path / "o")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "empty" in err[0]
    cv2.imwrite(str(tmp_path / "a.png"), xray(5))
    with pytest.raises(SystemExit):
        main(["predict", str(tmp_path / "a.png"), "--model", str(tmp_path / "missing.onnx")])
    assert "missing.onnx" in capsys.readouterr().err


def test_wrapped_commands_are_library_commands(capsys):
    assert main(["export", "--help"]) == 0  # mahtnet.commands.export's own help, in this process
    assert "--refiner" in capsys.readouterr().out


# ---- the headline pipeline (shape decoding + refiner) on ONNX files alone ------------------


@pytest.fixture(scope="module")
def refiner(tmp_path_factory):
    return tiny_refiner_checkpoint(tmp_path_factory.mktemp("refiner") / "refiner.pt")


@pytest.fixture(scope="module")
def shape_prior(tmp_path_factory):
    from mahtnet.data.synthetic import load_shape_model, sample_landmarks
    from mahtnet.decoding.shape import ShapePrior

    rng = np.random.default_rng(0)
    prior = ShapePrior.fit(np.stack([sample_landmarks(rng, load_shape_model()) for _ in range(40)]))
    return prior.save(tmp_path_factory.mktemp("prior") / "shape_prior.npz")


def test_refiner_onnx_export_matches_pytorch(refiner, tmp_path):
    from mahtnet.decoding import OnnxRefiner, TorchRefiner
    from mahtnet.deploy.export import export_refiner_onnx

    onnx = export_refiner_onnx(refiner, tmp_path / "refiner.onnx")
    ref, got = TorchRefiner(refiner, "cpu"), OnnxRefiner(onnx)
    assert got.card.kind == "refiner" and got.card.spacing_mm == 0.3 and got.card.input_size == (16, 16)
    patches = np.random.default_rng(2).integers(0, 256, (5, 16, 16), dtype=np.uint8)
    landmark = np.array([0, 3, 18, 7, 7])
    out = got(patches, landmark)
    assert out.shape == (5, 16, 16)
    np.testing.assert_allclose(np.exp(out).sum(axis=(1, 2)), 1.0, atol=1e-5)  # a log-softmax per patch
    np.testing.assert_allclose(out, ref(patches, landmark), atol=1e-4)
    with pytest.raises(ValueError, match="refiner model, not a coarse"):
        OnnxBackend(onnx)


def test_headline_pipeline_on_onnx_runs_without_torch(checkpoint, onnx_model, refiner, shape_prior, tmp_path):
    """``mahtnet predict --model X.onnx --refiner R.onnx --shape-prior P``: PyTorch is never
    imported, and the landmarks are the PyTorch files' to 0.05 px."""
    from mahtnet.deploy.export import export_refiner_onnx

    refiner_onnx = export_refiner_onnx(refiner, tmp_path / "refiner.onnx")
    cv2.imwrite(str(tmp_path / "a.png"), xray(5, 300, 240))
    runs = {"onnx": (onnx_model, refiner_onnx), "pt": (checkpoint, refiner)}
    docs = {}
    for name, (model, ref) in runs.items():
        out = tmp_path / name
        code = (
            "import sys; from mahtnet.cli import main; "
            f"rc = main(['predict', {str(tmp_path / 'a.png')!r}, '--model', {str(model)!r}, '--refiner', "
            f"{str(ref)!r}, '--shape-prior', {str(shape_prior)!r}, '--pixel-spacing', '0.1', "
            f"'--out', {str(out)!r}, '--no-overlay', '--device', 'cpu']); print(rc, 'torch' in sys.modules)"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        rc, torch_loaded = result.stdout.split()[-2:]
        assert rc == "0", result.stderr
        assert torch_loaded == ("False" if name == "onnx" else "True")
        docs[name] = json.loads((out / "a.json").read_text())
        assert docs[name]["decoding"] == "refined"
    pts = [np.array([[r["x_px"], r["y_px"]] for r in d["landmarks"]]) for d in docs.values()]
    assert np.abs(pts[0] - pts[1]).max() <= 0.05
