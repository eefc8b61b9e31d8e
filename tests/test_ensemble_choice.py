"""scripts/ensemble_choice.py: the ensemble is shipped only when it beats the single members on
validation by more than their seed-to-seed SD."""

from pathlib import Path

import numpy as np
import pytest
from conftest import load_script

from mahtnet.analysis.stats import mean_sd

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def choice():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(SCRIPTS))  # it imports its sibling scripts/ensemble.py
        yield load_script("ensemble_choice")


def block(singles, heatmaps, points):
    scores = {f"seed{s}": {"mre_mm": v} for s, v in zip((42, 43, 44), singles, strict=True)}
    scores |= {"heatmaps": {"mre_mm": heatmaps}, "points": {"mre_mm": points}}
    return {"scores": {"mean": scores}, "single_mean": {"mean": {"mre_mm": mean_sd(list(singles))}}}


def test_the_ensemble_is_chosen_only_beyond_the_seed_sd(choice):
    singles = (1.10, 1.12, 1.14)  # mean 1.12, SD 0.02
    won = choice.choose(block(singles, 1.09, 1.095))
    assert won["chosen"] == "heatmaps" and won["gain_mm"] == pytest.approx(0.03)
    assert won["single_sd_mm"] == pytest.approx(0.02)
    assert choice.choose(block(singles, 1.11, 1.105))["chosen"] == "seed42"  # 0.015 < SD: not a result
    assert choice.choose(block(singles, 1.10, 1.05))["best_ensemble"] == "points"


def test_spread_and_flags(choice):
    pred = {f"seed{s}": np.zeros((2, 3, 2)) for s in (42, 43, 44)}
    pred["seed44"][0, 1] = [30.0, 0.0]  # one landmark: members 0, 0, 30 px apart on x
    spread = choice.spread_mm(pred, 0.1)
    assert spread[0, 1] == pytest.approx((1.0 + 1.0 + 2.0) / 3) and spread.sum() == spread[0, 1]
    err = np.array([[0.5, 5.0, 12.0], [1.0, 4.5, 0.2]])
    f = choice.flag_figures(spread > 0.5, err)
    assert f["over_4mm"] == {"n": 3, "flagged": 1} and f["over_10mm"] == {"n": 1, "flagged": 0}
    assert f["flag_rate"] == pytest.approx(1 / 6)
