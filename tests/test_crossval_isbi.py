"""scripts/crossval_isbi.py (issue 43 item 1): the fold experiments it queues and the table it
writes from fold snapshots (made up here; the real folds are DVC experiments of hours)."""

import json
import sys

import numpy as np
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))

import crossval_isbi  # noqa: E402

from mahtnet.config import load_profiles, with_settings  # noqa: E402
from mahtnet.landmarks import LANDMARK_NAMES  # noqa: E402


def _run(model, fold, offset):
    rng = np.random.default_rng(fold)
    ids = [f"{i:03d}" for i in range(fold, 400, 4)]
    errors = {
        gt: rng.gamma(2.0, 0.6, (len(ids), len(LANDMARK_NAMES))) + offset for gt in ("mean", "official")
    }
    scores = {
        gt: {"mre_mm": float(e.mean()), "sdr_2mm": float(100 * (e <= 2).mean()), "max_mm": float(e.max())}
        for gt, e in errors.items()
    }
    per = {gt: {"image_id": ids, "errors_mm": e.tolist()} for gt, e in errors.items()}
    return {"model": model, "fold": fold, "scores": scores, "per_image": per}


def test_the_table_reports_finished_folds_and_names_the_missing(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    for fold in (1, 2, 3):
        (runs / f"maht_net-fold{fold}.json").write_text(json.dumps(_run("maht_net", fold, 0.0)))
    for fold in (1, 2):
        (runs / f"baseline-fold{fold}.json").write_text(json.dumps(_run("baseline", fold, 0.1)))
    monkeypatch.setattr(crossval_isbi, "RUNS", runs)
    monkeypatch.setattr(crossval_isbi, "OUT", tmp_path / "cv")
    crossval_isbi.table()
    summary = json.loads((tmp_path / "cv.json").read_text())
    mre = [_run("maht_net", f, 0.0)["scores"]["mean"]["mre_mm"] for f in (1, 2, 3)]
    assert summary["models"]["maht_net"]["folds"] == [1, 2, 3]
    assert np.isclose(summary["models"]["maht_net"]["mean"]["mre_mm"]["mean"], np.mean(mre))
    assert np.isclose(summary["models"]["maht_net"]["mean"]["mre_mm"]["sd"], np.std(mre, ddof=1))
    assert summary["missing"] == ["isbi-cv4-maht_net-f4", "isbi-cv4-baseline-f3", "isbi-cv4-baseline-f4"]
    paired = summary["paired"]["mean"]
    assert paired["images"] == 200 and np.isclose(paired["mean_diff_mm"], -0.1) and paired["p_value"] < 1e-6
    assert list(summary["per_landmark"]["maht_net"]) == list(LANDMARK_NAMES)
    text = (tmp_path / "cv.md").read_text()
    assert "| mean +- SD of 3 |" in text and "Not run or not finished: isbi-cv4-maht_net-f4" in text


def test_the_profile_reads_fold_one_and_the_queue_overrides_the_fold():
    profile = load_profiles(REPO / "profiles.yaml", REPO)[crossval_isbi.PROFILE]["set"]
    assert (profile["data.train_split"], profile["data.test_split"]) == ("cv4/set1/train", "cv4/set1/val")
    assert profile["data.extra_test_splits"] == []
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    with_settings(params, profile, ["data.train_split=cv4/set3/train"])  # valid settings
    assert crossval_isbi.held_out(3) == "cv4-set3-val"
    assert crossval_isbi.experiment("baseline", 2) == "isbi-cv4-baseline-f2"
