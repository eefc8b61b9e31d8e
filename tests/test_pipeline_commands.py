"""Commands run against the tiny DVC pipeline (the ``pipeline`` fixture of tests/conftest.py):
an experiment in a fresh copy (the slowest, first), prediction, evaluation, an ensemble, a bad params file
and a DVC remote. Each writes outside the pipeline's folder or into a copy of it."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny_pipeline import run, run_ok

pytestmark = pytest.mark.slow


def test_experiment_in_a_fresh_copy_reruns_only_what_a_model_setting_touches(pipeline, tmp_path):
    """A MAHT-Net setting changed in an experiment run in a fresh copy of the repository
    (``dvc exp run --temp``: the temporary-directory executor a queue's worker runs each queued
    experiment in, here in the foreground, without the Celery worker of ``dvc queue start``): its
    log shows the U-Net's chain (training, refiner, evaluation) restored, not run, and MAHT-Net's
    first stage re-run. Two targets keep it short (one training); docs/evaluation.md lists what
    else a model.* change re-runs."""
    dvc = str(Path(sys.executable).parent / "dvc")
    work = tmp_path / "work"
    shutil.copytree(pipeline, work, symlinks=True)
    run_ok(["git", "add", "-A"], work)
    run_ok(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"], work)
    cmd = [dvc, "exp", "run", "--temp", "-n", "tf2", "-S", "model.transformer_layers=2"]
    log = run_ok([*cmd, "evaluate@baseline", "train_stage1"], work).stdout
    ran = {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}
    # restored: from the committed lockfile ("didn't change") or from the run-cache ("is cached")
    restored = {
        line.split("'")[1] for line in log.splitlines() if line.startswith("Stage '") and "skipping" in line
    }
    assert ran == {"train_stage1"}, log[-3000:]
    u_net = {"train_baseline", "train_refine@baseline", "evaluate@baseline", "preprocess"}
    assert u_net <= restored, log[-3000:]
    shown = run([dvc, "exp", "show", "--csv", "--no-pager"], work)
    assert "tf2" in shown.stdout


def test_onnx_export_and_predict_on_a_test_image(pipeline, tmp_path):
    export = json.loads((pipeline / "metrics" / "export.json").read_text())
    for name in ("maht_net", "baseline"):
        assert export[name]["max_diff_px"] <= 0.05  # PyTorch vs onnxruntime, original px
        assert export[name]["mre_mm_onnx"] == pytest.approx(export[name]["mre_mm_pytorch"], abs=0.01)
        assert (pipeline / "data" / "models" / f"{name}.onnx").is_file()
    robust = json.loads((pipeline / "metrics" / "robustness.json").read_text())
    assert set(robust) == {"baseline", "maht_net"} and len(robust["maht_net"]["perturbations"]) == 8
    assert robust["maht_net"]["perturbations"]["rotate"]["rows"][-1]["mre_mm"] > 0
    for model in ("baseline", "maht_net"):
        cal = json.loads((pipeline / "metrics" / f"calibration_{model}.json").read_text())
        assert cal["calibration_error_mm"] >= 0 and len(cal["per_landmark_spearman"]) == 19
        assert (pipeline / "data" / "models" / f"calibration_{model}.json").is_file()
    quantize = json.loads((pipeline / "metrics" / "quantize.json").read_text())
    assert quantize["int8"]["file_mb"] < quantize["fp32"]["file_mb"]
    table = json.loads((pipeline / "metrics" / "optimise.json").read_text())
    variants = ["maht_net", "unet", "student", "distilled", "pruned_50", "maht_net_int8"]
    assert list(table) == variants
    assert table["student"]["parameters"] < table["unet"]["parameters"]
    assert table["pruned_50"]["parameters"] < 0.6 * table["maht_net"]["parameters"]
    assert not any("peak_rss_mb" in key for r in table.values() for key in r)  # optimise.peak_memory
    assert all(0 <= r["wilcoxon_p"] <= 1 for n, r in table.items() if n != "maht_net")
    assert (pipeline / "plots" / "optimise" / "mre_vs_latency.png").stat().st_size > 1000
    image = sorted((pipeline / "data" / "synthetic" / "RawImage" / "Test1Data").iterdir())[0]
    for model in ("data/models/maht_net.onnx", "data/models/stage3.pt"):
        out = tmp_path / Path(model).suffix[1:]
        args = ["predict", str(image), "--model", model, "--out", str(out), "--pixel-spacing", "0.5"]
        args += ["--shape-prior", "data/models/shape_prior.npz"]
        if model.endswith(".pt"):
            args += ["--refiner", "data/models/refine_maht_net.pt"]
        result = run([sys.executable, "-m", "mahtnet", *args], pipeline)
        assert result.returncode == 0, result.stderr[-2000:]
        doc = json.loads((out / f"{image.stem}.json").read_text())
        assert doc["decoding"] == ("refined" if model.endswith(".pt") else "shape-consistent")
        assert len(doc["landmarks"]) == 19 and doc["measurements"]["MW"]["value"] is not None


def test_evaluate_command_on_a_dataset_root(pipeline, tmp_path):
    out = tmp_path / "eval.json"
    args = [sys.executable, "stages/evaluate.py", "--checkpoint", "data/models/baseline.pt"]
    args += ["--data-root", "data/synthetic", "--split", "Test1Data", "--out", str(out)]
    args += ["--refiner", "data/models/refine_baseline.pt", "--shape-prior", "data/models/shape_prior.npz"]
    result = run(args, pipeline)
    assert result.returncode == 0, result.stderr[-2000:]
    written = json.loads(out.read_text())["test1"]
    assert written["images"] == 3 and list(written["variants"]) == ["coarse", "shape", "refined"]


def test_unknown_params_key_fails_with_its_name(pipeline, tmp_path):
    bad = tmp_path / "params.yaml"
    raw = yaml.safe_load((pipeline / "params.yaml").read_text())
    raw["train"]["learning_rate"] = 0.1  # "learning_rate" is no key of train
    bad.write_text(yaml.safe_dump(raw))
    args = [sys.executable, "stages/evaluate.py", "--checkpoint", "data/models/baseline.pt"]
    args += ["--prepared", "data/prepared/test.npz", "--out", str(tmp_path / "x.json"), "--params", str(bad)]
    result = run(args, pipeline)
    assert result.returncode != 0
    assert "unknown params key 'train.learning_rate'" in result.stderr
    assert not (tmp_path / "x.json").exists()


def test_ensemble_of_checkpoints(pipeline, tmp_path):
    from mahtnet.analysis.evaluation import evaluate
    from mahtnet.data.preprocess import PreparedSet

    data = PreparedSet.load(pipeline / "data" / "prepared" / "test.npz")
    models = pipeline / "data" / "models"
    single = evaluate(models / "stage3.pt", data, [2.0], "cpu")
    twice = evaluate([models / "stage3.pt", models / "stage3.pt"], data, [2.0], "cpu")
    np.testing.assert_allclose(twice.pred, single.pred)
    pair = evaluate([models / "baseline.pt", models / "stage3.pt"], data, [2.0], "cpu")
    other = evaluate(models / "baseline.pt", data, [2.0], "cpu")
    np.testing.assert_allclose(pair.pred, (single.pred + other.pred) / 2)
    out = tmp_path / "ensemble.json"
    args = [sys.executable, "stages/evaluate.py", "--checkpoint", str(models / "baseline.pt")]
    args += [str(models / "stage3.pt"), "--prepared", "data/prepared/test.npz", "--out", str(out)]
    result = run(args, pipeline)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(out.read_text())["test1"]["official"]["mre_mm"] == pytest.approx(
        pair.summary()["mre_mm"], rel=1e-6
    )


def test_dvc_remote_push_then_pull_in_a_second_clone_retrains_nothing(pipeline, tmp_path):
    """A teammate's clone pulls the prepared data, checkpoints and ONNX files from a shared
    directory remote; ``dvc repro`` there finds everything up to date."""
    dvc = str(Path(sys.executable).parent / "dvc")
    first, remote, second = tmp_path / "first", tmp_path / "remote", tmp_path / "second"
    shutil.copytree(pipeline, first, symlinks=True)
    steps = [
        ([dvc, "remote", "add", "-d", "shared", str(remote)], first),
        (["git", "add", "-A"], first),
        (["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pipeline"], first),
        ([dvc, "push"], first),
        (["git", "clone", "-q", str(first), str(second)], tmp_path),
        ([dvc, "pull"], second),
    ]
    for cmd, cwd in steps:
        run_ok(cmd, cwd)
    for name in ("data/models/stage3.pt", "data/models/maht_net.onnx", "data/prepared/test.npz"):
        assert (second / name).read_bytes() == (first / name).read_bytes()
    result = run_ok([dvc, "repro"], second)
    assert "Running stage" not in result.stdout, result.stdout[-3000:]
