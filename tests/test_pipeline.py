"""A tiny end-to-end run of the real DVC pipeline on a few synthetic images: its outputs (the
``pipeline`` fixture of tests/conftest.py builds it; tests/test_pipeline_commands.py runs
commands against it)."""

import json
import sqlite3

import pytest

from mahtnet.clinical import MEASUREMENTS

pytestmark = pytest.mark.slow


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
    second = (pipeline.parent / "second_repro.txt").read_text()  # the build's second dvc repro
    assert "up to date" in second and "Running stage" not in second


def test_mlflow_has_one_run_per_stage(pipeline):
    db = pipeline.parent / "mlflow_pipeline.db"  # the pipeline's runs alone
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
    with sqlite3.connect(db) as con:  # tracking.log_models: false here
        assert con.execute("select count(*) from registered_models").fetchone()[0] == 0
