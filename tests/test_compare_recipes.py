"""scripts/compare_recipes.py: recipe B against recipe A on the same images, per run and over runs."""

import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from compare_recipes import summarize  # noqa: E402

NAMES = ["sella", "nasion", "gonion"]


def _write(run, model, errors, ids):
    (run / "data" / "eval").mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(errors, columns=NAMES)
    df.insert(0, "mre_mm", errors.mean(axis=1))
    df.insert(0, "image_id", ids)
    df.to_csv(run / "data" / "eval" / f"{model}_per_image.csv", index=False)


def test_recipe_b_better_by_a_known_amount_in_every_run(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"{i:03d}" for i in range(151, 181)]
    pairs = {}
    for seed, shift in (("s1", 0.3), ("s2", 0.5)):
        a, b = tmp_path / f"{seed}a", tmp_path / f"{seed}b"
        err = rng.uniform(1.0, 3.0, size=(len(ids), 3))
        _write(a, "m", err, ids)
        _write(b, "m", err - shift, ids)  # B better by `shift` everywhere
        pairs[seed] = (a, b)
    out = summarize(pairs, ["m"])
    assert out["per_run"]["m"]["s1"]["mre_diff"] == pytest.approx(-0.3)
    assert out["per_run"]["m"]["s2"]["per_landmark_mre_diff"]["gonion"] == pytest.approx(-0.5)
    over = out["over_runs"]["m"]
    assert over["mre_diff_mm"]["mean"] == pytest.approx(-0.4)
    assert over["mre_diff_mm"]["sd"] == pytest.approx(np.std([-0.3, -0.5], ddof=1))
    assert over["wilcoxon_p_run_averaged_image_mre"] < 1e-5


def test_runs_on_different_images_are_refused(tmp_path):
    err = np.ones((3, 3))
    _write(tmp_path / "a", "m", err, ["001", "002", "003"])
    _write(tmp_path / "b", "m", err, ["001", "002", "004"])
    with pytest.raises(ValueError, match="different images"):
        summarize({"s": (tmp_path / "a", tmp_path / "b")}, ["m"])
