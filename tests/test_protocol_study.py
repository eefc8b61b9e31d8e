"""mahtnet.studies.protocol: the protocol table, paired tests and the validation-only choice."""

import json

import numpy as np
import pytest

from mahtnet.studies import protocol as protocol_study

SUMMARY_KEYS = ("sd_mm", "sdr_2mm", "sdr_4mm", "max_mm", "n_over_10mm", "n_over_15mm")


def _run(protocol: str, model: str, seed: int, offset: float, n: int = 12) -> dict:
    """A snapshot whose per-image MREs are a fixed pattern plus ``offset`` (mm)."""
    rng = np.random.default_rng(seed)
    record = {"rev": "test", "model": model, "protocol": protocol, "seed": seed, "params": {}, "scores": {}}
    record["per_image"] = {}
    # no tied differences between any two runs (ties make scipy's Wilcoxon a permutation test)
    noise = np.random.default_rng([seed, *map(ord, f"{protocol}/{model}")])
    for s in ("val", "test1", "test2"):
        base = rng.uniform(1.0, 2.0, n) + offset + noise.normal(0, 0.002, n)
        per = {"image_id": [f"{i:03d}" for i in range(n)]}
        scores = {}
        for gt, shift in (("official", 0.0), ("mean", -0.2)):
            e = base + shift
            per[f"refined.{gt}"] = e.tolist()
            scores[gt] = {"mre_mm": float(e.mean()), **{k: 1.0 for k in SUMMARY_KEYS}}
        record["per_image"][s] = per
        record["scores"][s] = {
            "variants": {"refined": scores["official"]},
            "variants_mean": {"refined": scores["mean"]},
        }
    return record


def test_table_means_paired_tests_and_validation_choice(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed in (
        42,
        43,
        44,
    ):  # mean is 0.3 mm better than senior on every image; doctors 0.01 worse than mean
        for protocol, offset in (("senior", 0.3), ("mean", 0.0), ("doctors", 0.01)):
            run = _run(protocol, "maht_net", seed, offset)
            (runs / f"{protocol}-maht_net-seed{seed}.json").write_text(json.dumps(run))
        (runs / f"mean-baseline-seed{seed}.json").write_text(json.dumps(_run("mean", "baseline", seed, 0.5)))
    out_md, out_json = tmp_path / "protocol.md", tmp_path / "protocol.json"
    protocol_study.table(runs, out_md, out_json, reference="senior")
    doc = json.loads(out_json.read_text())
    row = next(
        r
        for r in doc["rows"]
        if (r["protocol"], r["model"], r["set"], r["gt"]) == ("mean", "maht_net", "test2", "official")
    )
    assert row["seeds"] == [42, 43, 44] and row["mre_mm"]["sd"] > 0
    test = doc["tests"]["maht_net: mean - senior"]["test2.official"]
    assert test["mre_diff"]["mean"] == pytest.approx(-0.3, abs=0.005) and test["pooled_p"] < 0.01
    assert set(test["per_seed"]) == {"42", "43", "44"}
    vs_unet = doc["tests"]["mean: maht_net - baseline"]["test2.mean"]
    assert vs_unet["mre_diff"]["mean"] == pytest.approx(-0.5, abs=0.005)
    # chosen on validation against the mean of both doctors; doctors is within the seed SD of it
    assert doc["chosen"]["chosen"] == "mean" and doc["chosen"]["tied_with"] == ["doctors"]
    assert "| mean | maht_net | 42,43,44 | test2 | official |" in out_md.read_text()


def test_no_snapshots_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run snapshots"):
        protocol_study.table(tmp_path, tmp_path / "a.md", tmp_path / "a.json", "senior")


def test_table_rewrites_only_the_readme_block(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for protocol, offset in (("senior", 0.3), ("mean", 0.0)):
        run = _run(protocol, "maht_net", 42, offset)
        (runs / f"{protocol}-maht_net-seed42.json").write_text(json.dumps(run))
    readme = tmp_path / "README.md"
    before, after = "# Title\n\nintro\n\n", "\n\n**What generalises.** prose\n"
    stale = "| MAHT-Net | senior | 41 | stale row |"
    block = [protocol_study.README_START, stale, protocol_study.README_END]
    readme.write_text(before + "\n".join(block) + after)
    protocol_study.table(runs, tmp_path / "p.md", tmp_path / "p.json", "mean", readme)
    text = readme.read_text()
    assert text.startswith(before) and text.endswith(after) and stale not in text
    block = text[len(before) : -len(after)].splitlines()
    assert block[2].startswith("| model | training labels |")
    assert [line.split(" | ")[1] for line in block[4:6]] == ["mean", "senior"]  # the study's rows, sorted
    published = [line for line in block if line.startswith("| *published*")]
    assert len(published) == len(protocol_study.load_literature()["methods"]) and "| 1.12† |" in published[0]
    assert text.count(protocol_study.PUBLISHED_NOTE) == 1
    protocol_study.table(runs, tmp_path / "p.md", tmp_path / "p.json", "mean", readme)
    assert readme.read_text() == text  # idempotent


def test_readme_without_markers_is_a_clear_error_and_left_alone(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "mean-maht_net-seed42.json").write_text(json.dumps(_run("mean", "maht_net", 42, 0.0)))
    readme = tmp_path / "README.md"
    readme.write_text("# no table here\n")
    with pytest.raises(ValueError, match="README.md: no .* block to rewrite"):
        protocol_study.table(runs, tmp_path / "p.md", tmp_path / "p.json", "mean", readme)
    assert readme.read_text() == "# no table here\n"


def _workspace_run(root, seed: int = 42, model: str = "maht_net"):
    """A finished run's files as a workspace holds them: params, metrics, per-image errors."""
    params = {"seed": seed, "data": {"gt": "mean", "dataset": "isbi2015"}}
    params |= {"preprocess": {"height": 320, "width": 256}, "model": {"encoder": "tf_efficientnet_lite0"}}
    (root / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    scores = {"mre_mm": 1.5, "sdr_2mm": 80.0}
    metrics = {
        s: {"variants": {"shape": scores}, "variants_mean": {"shape": scores}} for s in ("val", "test2")
    }
    (root / "metrics").mkdir()
    (root / "metrics" / f"{model}.json").write_text(json.dumps(metrics))
    sets = root / "data" / "eval" / f"{model}_sets"
    sets.mkdir(parents=True)
    for s in ("val", "test2"):
        for gt in ("official", "mean"):
            (sets / f"{s}_shape_errors_{gt}.csv").write_text("image_id,mre_mm\n007,1.23456\n301,2.0\n")


def test_record_of_a_workspace_run(tmp_path):
    from mahtnet.studies.snapshots import errors, record

    _workspace_run(tmp_path)
    r = record("workspace", "maht_net", tmp_path)
    assert (r["protocol"], r["seed"], r["model"]) == ("mean", 42, "maht_net")
    assert r["params"]["preprocess.width"] == 256 and set(r["scores"]) == {"val", "test2"}
    ids, mre = errors(r, "test2", "shape.mean")
    assert ids == ["007", "301"] and mre.tolist() == [1.2346, 2.0]  # image ids stay strings
    (tmp_path / "metrics" / "maht_net.json").write_text("{}")
    with pytest.raises(ValueError, match="metrics/maht_net.json has no per-set scores"):
        record("workspace", "maht_net", tmp_path)


def test_paired_over_seeds_common_seeds_only_and_same_images():
    from mahtnet.studies.snapshots import paired_over_seeds

    ids = ["001", "002", "003", "004", "005", "006"]
    a = {42: (ids, np.arange(6.0)), 43: (ids, np.arange(6.0) + 1)}
    b = {42: (ids, np.arange(6.0) + [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), 44: (ids, np.zeros(6))}
    res = paired_over_seeds(a, b)
    assert res["seeds"] == [42] and res["per_seed"]["42"]["mre_diff"] == pytest.approx(0.35)
    assert res["diffs"].shape == (1, 6) and 0 < res["pooled_p"] < 0.05
    assert paired_over_seeds(a, {44: (ids, np.zeros(6))}) is None
    with pytest.raises(ValueError, match="seed 42: the two runs scored different images"):
        paired_over_seeds(a, {42: (ids[::-1], np.zeros(6))})
