"""Evaluation against each doctor, inter-observer error, confidence correlation, clinical
accuracy, the report, cross-validation folds and the ablation settings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import edited

from mahtnet import metrics
from mahtnet.analysis.evaluation import Evaluation
from mahtnet.config import parse_params
from mahtnet.data.preprocess import PreparedSet
from mahtnet.landmarks import LANDMARK_NAMES
from mahtnet.training.crossval import concat, fold_indices, summarize_folds

K = 19


def _prepared(n: int, seed: int = 0, official: str = "senior") -> PreparedSet:
    rng = np.random.default_rng(seed)
    senior = rng.uniform(200, 1800, size=(n, K, 2))
    junior = senior + rng.normal(0, 10, size=senior.shape)
    return PreparedSet(
        ids=np.array([f"{i:03d}" for i in range(n)]),
        images=np.zeros((n, 64, 64), np.uint8),
        landmarks=(senior + junior) / 2 / 30,
        landmarks_orig=(senior + junior) / 2,
        boxes=np.tile([1 / 30, 1 / 30, 0, 0, 1935, 1935], (n, 1)),
        spacing=np.full(n, 0.1),
        senior_orig=senior,
        junior_orig=junior,
        # as ISBI Test1: the official ground truth is the senior doctor's
        official_orig=senior if official == "senior" else (senior + junior) / 2,
    )


def _evaluation(data: PreparedSet, pred: np.ndarray, confidence: np.ndarray | None = None) -> Evaluation:
    errors = metrics.radial_errors_mm(pred, data.official_orig, data.spacing)
    return Evaluation(
        ids=data.ids,
        pred=pred,
        gt=data.official_orig,
        errors_mm=errors,
        spacing=data.spacing,
        confidence=np.ones_like(errors) if confidence is None else confidence,
        landmark_names=list(LANDMARK_NAMES),
        thresholds_mm=[2.0, 2.5, 3.0, 4.0],
        data=data,
    )


def test_scores_against_each_doctor_agree_with_numpy():
    data = _prepared(12)
    rng = np.random.default_rng(1)
    pred = data.landmarks_orig + rng.normal(0, 15, size=data.landmarks_orig.shape)
    by_gt = _evaluation(data, pred).by_ground_truth()
    for gt, points in (
        ("mean", data.landmarks_orig),
        ("senior", data.senior_orig),
        ("junior", data.junior_orig),
    ):
        e = np.sqrt(((pred - points) ** 2).sum(-1)) * 0.1  # direct NumPy, mm
        assert by_gt[gt]["mre_mm"] == pytest.approx(e.mean())
        assert by_gt[gt]["sd_mm"] == pytest.approx(e.std())
        assert by_gt[gt]["median_mm"] == pytest.approx(np.median(e))
        assert by_gt[gt]["sdr_2.5mm"] == pytest.approx(100 * (e <= 2.5).mean())
    inter = np.sqrt(((data.senior_orig - data.junior_orig) ** 2).sum(-1)) * 0.1
    assert by_gt["inter_observer"]["mre_mm"] == pytest.approx(inter.mean())
    # predicting the senior's landmarks exactly: zero error against the senior only
    exact = _evaluation(data, data.senior_orig).by_ground_truth()
    assert exact["senior"]["mre_mm"] == 0.0 and exact["junior"]["mre_mm"] == pytest.approx(inter.mean())


def test_confidence_correlation_sign():
    data = _prepared(10, official="mean")
    rng = np.random.default_rng(2)
    offsets = rng.uniform(0, 40, size=(10, K))
    pred = data.landmarks_orig.copy()
    pred[..., 0] += offsets
    informative = _evaluation(data, pred, confidence=1.0 / (1.0 + offsets)).confidence_vs_error()
    assert informative["spearman_rho"] < -0.99 and informative["p_value"] < 1e-10
    big = _prepared(40, official="mean")
    noisy = big.landmarks_orig + rng.normal(0, 15, size=big.landmarks_orig.shape)
    noise = _evaluation(big, noisy, confidence=rng.uniform(size=(40, K))).confidence_vs_error()
    assert abs(noise["spearman_rho"]) < 0.15  # 760 independent pairs: SD of rho about 0.036
    constant = _evaluation(data, pred).confidence_vs_error()  # undefined: reported as no correlation
    assert constant == {"spearman_rho": 0.0, "p_value": 1.0}


def test_clinical_accuracy_is_perfect_for_perfect_landmarks():
    data = _prepared(6)
    clinical = _evaluation(data, data.official_orig.copy()).clinical()
    assert clinical["accuracy"]["mean"] == 100.0
    assert set(clinical["inter_observer"]) == set(clinical["accuracy"])


def test_evaluation_writes_every_output(tmp_path):
    data = _prepared(5)
    evaluation = _evaluation(data, data.landmarks_orig + 3.0)
    evaluation.write(tmp_path / "plots", tmp_path / "eval" / "x_per_image.csv")
    names = {p.name for p in (tmp_path / "plots").iterdir()}
    assert names == {
        "per_landmark.csv",
        "sdr_curve.csv",
        "confidence.png",
        "overlay_best.png",
        "overlay_worst.png",
    }
    predictions = pd.read_csv(tmp_path / "eval" / "x_predictions.csv", dtype={"image_id": str})
    assert len(predictions) == 5 * K and set(predictions.columns) >= {"x", "y", "confidence", "error_mm"}


def test_block_scores_each_set_against_the_official_ground_truth_and_the_mean():
    data = _prepared(6)
    block = _evaluation(data, data.landmarks_orig.copy()).block()  # predict the mean of both doctors
    assert block["mean"]["mre_mm"] == pytest.approx(0.0)
    official = metrics.radial_errors_mm(data.landmarks_orig, data.senior_orig, data.spacing)
    assert block["official"]["mre_mm"] == pytest.approx(official.mean()) and block["official"]["mre_mm"] > 0
    assert block["by_gt"]["official"]["mre_mm"] == pytest.approx(block["official"]["mre_mm"])
    assert {"n_over_10mm", "n_over_15mm", "max_mm"} <= set(block["official"])


def test_fold_indices_partition_the_training_images():
    folds = fold_indices(150, 4, seed=42)
    assert [len(f) for f in folds] == [38, 38, 37, 37]
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(150))
    assert all(np.array_equal(a, b) for a, b in zip(folds, fold_indices(150, 4, seed=42), strict=True))
    with pytest.raises(ValueError, match="crossval.folds"):
        fold_indices(3, 4, seed=0)


def test_summarize_folds_and_concat():
    s = summarize_folds([{"mre_mm": 1.0}, {"mre_mm": 2.0}, {"mre_mm": 3.0}])
    assert s["mre_mm"] == {"mean": 2.0, "sd": 1.0, "min": 1.0, "max": 3.0}
    both = concat([_prepared(3), _prepared(2, seed=1)])
    assert len(both) == 5 and both.senior_orig.shape == (5, K, 2)


def test_every_ablation_is_a_valid_params_setting(params_raw):
    from mahtnet.models.variants import VARIANTS
    from mahtnet.studies.ablation import LOSSES, settings_of

    names = [n for n, v in VARIANTS.items() if v.network == "maht_net"] + list(LOSSES)
    assert {"no-transformer", "no-attention-gates", "no-fpn", "transformer-2", "transformer-6"} <= set(names)
    assert {"encoder-b1", "encoder-resnet50", "loss-mse", "loss-adaptive-wing", "loss-focal"} <= set(names)
    for name in names:
        settings = settings_of(name)
        raw = params_raw
        for key, value in settings.items():
            raw = edited(raw, key, value)
        p = parse_params(raw)  # valid, and the U-Net baseline's settings are untouched
        assert p.baseline == parse_params(params_raw).baseline, name
        assert p.model.unet_channels == parse_params(params_raw).model.unet_channels
