"""A tiny end-to-end run of the real DVC pipeline on a few synthetic images."""

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO

from mahtnet.analysis.clinical import MEASUREMENTS

pytestmark = pytest.mark.slow


def _tiny_params(tmp: Path) -> dict:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["synthetic"].update(n_train=10, n_test=3, width=192, height=240)
    p["preprocess"].update(height=64, width=64)
    p["model"].update(unet_channels=4, encoder="efficientnet_lite0", transformer_layers=1, transformer_dim=16)
    p["model"].update(transformer_heads=2, transformer_pos_size=2, decoder_channels=8)
    p["train"].update(batch_size=4, threads=1)
    for stage in ("stage1", "stage2", "stage3"):
        p[stage].update(epochs=1, warmup_epochs=1)
    p["baseline"]["epochs"] = 3  # the same budget
    p["refine"].update(patch_size=16, channels=4, depth=2, batch_size=16)
    p["refine"]["train"].update(epochs=1, warmup_epochs=1)
    p["distill"]["student_channels"] = 2
    p["prune"]["sparsities_pct"] = [25, 50]
    p["prune"]["train"].update(epochs=1, warmup_epochs=1)
    p["data"]["val_fraction"] = 0.2
    p["tracking"]["uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
    return p


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    bindir = Path(sys.executable).parent
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "NO_ALBUMENTATIONS_UPDATE": "1", "HOME": str(cwd)}
    env["OMP_NUM_THREADS"] = "1"  # tiny models, the other xdist worker on the other core: 269 -> 236 s alone
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _run_ok(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """:func:`_run`, failing the test with the command and its output's tail unless it succeeds."""
    result = _run(args, cwd)
    assert result.returncode == 0, f"{args}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("pipeline")
    work = tmp / "repo"
    work.mkdir()
    for name in ("src", "stages"):
        shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", work)
    (work / "params.yaml").write_text(yaml.safe_dump(_tiny_params(tmp), sort_keys=False))
    dvc = str(Path(sys.executable).parent / "dvc")
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "config", "core.analytics", "false"]):
        assert _run(cmd, work).returncode == 0
    result = _run([dvc, "repro"], work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work


def test_pipeline_writes_metrics_plots_and_checkpoint(pipeline):
    scores = json.loads((pipeline / "metrics" / "baseline.json").read_text())
    assert {"val", "test1"} <= set(scores) and "test2" not in scores  # no extra test split here
    metrics = scores["test1"]
    for gt in ("official", "mean"):  # named by set and ground truth: test1.official.mre_mm, ...
        for key in ("mre_mm", "sd_mm", "median_mm", "mre_px", "sdr_2mm", "sdr_4mm", "n_over_15mm"):
            assert key in metrics[gt]
    assert metrics["images"] == 3 and metrics["official"]["mre_mm"] > 0
    # the synthetic official ground truth is the mean of both doctors (isbi.OFFICIAL_GT)
    assert metrics["official"]["mre_mm"] == pytest.approx(metrics["mean"]["mre_mm"])
    assert json.loads((pipeline / "metrics" / "maht_net.json").read_text())["test1"]["images"] == 3
    assert scores["val"]["images"] >= 1
    sets = sorted(p.name for p in (pipeline / "data" / "eval" / "baseline_sets").iterdir())
    assert "test1_refined_errors_mean.csv" in sets and "val_coarse_predictions.csv" in sets
    for name in ("baseline", "stage1", "stage2", "stage3"):
        assert (pipeline / "data" / "models" / f"{name}.pt").is_file()
        assert (pipeline / "data" / "runs" / name / "last.pt").is_file()  # resume state (persisted)
        assert (pipeline / "plots" / f"train_{name}" / "grad_flow.png").is_file()
    assert json.loads((pipeline / "metrics" / "train_baseline.json").read_text())["epochs_run"] == 3
    for name in ("baseline", "maht_net"):
        assert (pipeline / "plots" / name / "per_landmark.csv").read_text().count("\n") == 20
    assert (pipeline / "plots" / "heatmaps" / "targets.png").stat().st_size > 1000
    history = (pipeline / "plots" / "train_baseline" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss") and len(history) == 4  # 3 epochs: 1 + 1 + 1
    for name in ("baseline", "maht_net"):  # coarse -> shape-consistent -> refined
        assert (pipeline / "data" / "models" / f"refine_{name}.pt").is_file()
        test1 = json.loads((pipeline / "metrics" / f"{name}.json").read_text())["test1"]
        variants = test1["variants"]
        assert list(variants) == list(test1["variants_mean"]) == ["coarse", "shape", "refined"]
        assert {"max_mm", "n_over_10mm", "sdr_4mm"} <= set(variants["refined"])
        assert (pipeline / "data" / "eval" / f"{name}_coarse_per_image.csv").is_file()
        assert test1["official"]["mre_mm"] == pytest.approx(
            variants["refined"]["mre_mm"]
        )  # the last variant's
    heat = json.loads((pipeline / "metrics" / "heatmaps.json").read_text())
    assert heat["roundtrip_max_px"] < 0.05
    assert set(metrics["by_gt"]) == {"official", "mean", "senior", "junior", "inter_observer"}
    assert set(metrics["clinical"]["accuracy"]) == {*MEASUREMENTS, "mean"}


def test_compare_and_report(pipeline):
    compare = json.loads((pipeline / "metrics" / "compare.json").read_text())
    assert compare["reference"] == "baseline" and compare["images"] == 3
    res = compare["maht_net"]
    assert 0.0 <= res["wilcoxon"]["p_value"] <= 1.0 and len(res["bootstrap"]["mre_diff"]) == 2
    per_landmark = (pipeline / "plots" / "compare" / "per_landmark_maht_net.csv").read_text().splitlines()
    assert per_landmark[0].startswith("landmark,mre_a,mre_b") and len(per_landmark) == 20
    assert set(compare["pairs"]) == {
        "baseline_vs_baseline_coarse",
        "maht_net_vs_maht_net_coarse",
        "maht_net_coarse_vs_baseline_coarse",
    }
    assert 0.0 <= compare["pairs"]["maht_net_vs_maht_net_coarse"]["wilcoxon"]["p_holm_pairs"] <= 1.0
    report = (pipeline / "reports" / "report.md").read_text()
    headings = (
        "## Results",
        "## Decoding and refinement",
        "## Statistical comparison",
        "## Clinical measurements",
        "## Deployment trade-off",
        "## Where MAHT-Net looks",
        "## Robustness",
    )
    for heading in (*headings, "## Training"):
        assert heading in report
    assert "| pruned_50 |" in report and "| maht_net_int8 |" in report
    figures = (
        "overlay_worst_maht_net",
        "sdr_curves",
        "per_landmark_mre",
        "paired_mre_maht_net",
        "mre_vs_latency",
    )
    for name in figures:
        assert f"figures/{name}.png" in report
        assert (pipeline / "reports" / "figures" / f"{name}.png").stat().st_size > 1000


def test_second_repro_does_nothing(pipeline):
    result = _run([str(Path(sys.executable).parent / "dvc"), "repro"], pipeline)
    assert result.returncode == 0
    assert "up to date" in result.stdout and "Running stage" not in result.stdout


def test_mlflow_has_one_run_per_stage(pipeline):
    db = pipeline.parent / "mlflow.db"
    with sqlite3.connect(db) as con:
        names = {row[0] for row in con.execute("select name from runs")}
        metrics = {row[0] for row in con.execute("select key from metrics")}
    assert {"synthesize", "preprocess", "heatmaps", "train_baseline", "evaluate:baseline"} <= names
    assert {"train_stage1", "train_stage2", "train_stage3", "evaluate:maht_net", "compare"} <= names
    assert {"train_refine_baseline", "train_refine_stage3", "prepare_fine", "shape_prior"} <= names
    assert {
        "train/loss",
        "val/mre_mm",
        "train/lr_decoder",
        "train/lr_encoder",
        "monitor/epoch_time_s",
        "monitor/peak_memory_mb",
    } <= metrics
    assert {
        "monitor/grad_norm_transformer",
        "monitor/act_std_head",
        "test1.official.mre_mm",
        "test1.mean.mre_mm",
        "train/softmax_ce",
    } <= metrics
    with sqlite3.connect(db) as con:
        kind = con.execute("select value from experiment_tags where key = 'mlflow.experimentKind'").fetchall()
        inputs = con.execute("select count(*) from inputs").fetchone()[0]
        groups = {row[0] for row in con.execute("select value from tags where key = 'pipeline'")}
    assert kind and all(v == "custom_model_development" for (v,) in kind)
    assert inputs >= 2 * 4  # training and validation images of every heatmap-model stage
    assert len(groups) == 1  # one pipeline execution
    assert {"export:maht_net", "export:baseline"} <= names
    with sqlite3.connect(db) as con:
        registered = {row[0] for row in con.execute("select name from registered_models")}
        versions = {
            row[0]: row[1]
            for row in con.execute("select name, max(version) from model_versions group by name")
        }
    assert registered == {"unet", "maht_net", "refiner_unet", "refiner_maht_net", "maht_net_pruned"}
    assert versions["maht_net"] == 5  # stages 1-3, the ONNX export and its INT8 version
    assert versions["unet"] == 4  # baseline, the two students, the ONNX export
    assert versions["maht_net_pruned"] == 2  # train_prune@25 and @50


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
    variants = ["maht_net", "unet", "student", "distilled", "pruned_25", "pruned_50", "maht_net_int8"]
    assert list(table) == variants
    assert table["student"]["parameters"] < table["unet"]["parameters"]
    sizes = [table[n]["parameters"] for n in ("maht_net", "pruned_25", "pruned_50")]
    assert sizes == sorted(sizes, reverse=True) and sizes[2] < 0.6 * sizes[0]
    assert all(r["onnxruntime_peak_rss_mb"] >= r["onnxruntime_model_mb"] > 0 for r in table.values())
    assert all(r["pytorch_peak_rss_mb"] > 0 for n, r in table.items() if n != "maht_net_int8")
    assert all(0 <= r["wilcoxon_p"] <= 1 for n, r in table.items() if n != "maht_net")
    assert (pipeline / "plots" / "optimise" / "mre_vs_latency.png").stat().st_size > 1000
    image = sorted((pipeline / "data" / "synthetic" / "RawImage" / "Test1Data").iterdir())[0]
    for model in ("data/models/maht_net.onnx", "data/models/stage3.pt"):
        out = tmp_path / Path(model).suffix[1:]
        args = ["predict", str(image), "--model", model, "--out", str(out), "--pixel-spacing", "0.5"]
        args += ["--shape-prior", "data/models/shape_prior.npz"]
        if model.endswith(".pt"):
            args += ["--refiner", "data/models/refine_maht_net.pt"]
        result = _run([sys.executable, "-m", "mahtnet", *args], pipeline)
        assert result.returncode == 0, result.stderr[-2000:]
        doc = json.loads((out / f"{image.stem}.json").read_text())
        assert doc["decoding"] == ("refined" if model.endswith(".pt") else "shape-consistent")
        assert len(doc["landmarks"]) == 19 and doc["measurements"]["MW"]["value"] is not None


def test_evaluate_command_on_a_dataset_root(pipeline, tmp_path):
    out = tmp_path / "eval.json"
    args = [sys.executable, "stages/evaluate.py", "--checkpoint", "data/models/baseline.pt"]
    args += ["--data-root", "data/synthetic", "--split", "Test1Data", "--out", str(out)]
    args += ["--refiner", "data/models/refine_baseline.pt", "--shape-prior", "data/models/shape_prior.npz"]
    result = _run(args, pipeline)
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
    result = _run(args, pipeline)
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
    result = _run(args, pipeline)
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
        _run_ok(cmd, cwd)
    for name in ("data/models/stage3.pt", "data/models/maht_net.onnx", "data/prepared/test.npz"):
        assert (second / name).read_bytes() == (first / name).read_bytes()
    result = _run_ok([dvc, "repro"], second)
    assert "Running stage" not in result.stdout, result.stdout[-3000:]


def test_queued_experiment_reruns_only_what_a_model_setting_touches(pipeline, tmp_path):
    """A MAHT-Net setting changed in a queued experiment (``dvc exp run --queue``, run by the
    queue's worker in a fresh copy of the repository): its own log shows the U-Net's chain
    (training, refiner, evaluation) restored, not run, and MAHT-Net's first stage re-run. Two
    targets keep it short (one training); docs/evaluation.md lists what else a model.* change
    re-runs."""
    dvc = str(Path(sys.executable).parent / "dvc")
    work = tmp_path / "work"
    shutil.copytree(pipeline, work, symlinks=True)
    steps = (
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"],
        [dvc, "exp", "run", "--queue", "-n", "tf2", "-S", "model.transformer_layers=2"]
        + ["evaluate@baseline", "train_stage1"],
        [dvc, "exp", "run", "--run-all", "-j", "1"],  # the queue's worker, in the foreground
    )
    for cmd in steps:
        _run_ok(cmd, work)
    log = _run([dvc, "queue", "logs", "tf2"], work).stdout
    ran = {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}
    # restored: from the committed lockfile ("didn't change") or from the run-cache ("is cached")
    restored = {
        line.split("'")[1] for line in log.splitlines() if line.startswith("Stage '") and "skipping" in line
    }
    assert ran == {"train_stage1"}, log[-3000:]
    u_net = {"train_baseline", "train_refine@baseline", "evaluate@baseline", "preprocess"}
    assert u_net <= restored, log[-3000:]
    shown = _run([dvc, "exp", "show", "--csv", "--no-pager"], work)
    assert "tf2" in shown.stdout
