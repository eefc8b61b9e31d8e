"""scripts/protocol_study.py: the protocol table, paired tests and the validation-only choice."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import protocol_study  # noqa: E402

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
    with pytest.raises(SystemExit, match="no run snapshots"):
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
    assert len(published) == len(protocol_study.load_literature()["methods"]) and "| 1.12 |" in published[0]
    protocol_study.table(runs, tmp_path / "p.md", tmp_path / "p.json", "mean", readme)
    assert readme.read_text() == text  # idempotent


def test_readme_without_markers_is_a_clear_error_and_left_alone(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "mean-maht_net-seed42.json").write_text(json.dumps(_run("mean", "maht_net", 42, 0.0)))
    readme = tmp_path / "README.md"
    readme.write_text("# no table here\n")
    with pytest.raises(SystemExit, match="README.md: no .* block to rewrite"):
        protocol_study.table(runs, tmp_path / "p.md", tmp_path / "p.json", "mean", readme)
    assert readme.read_text() == "# no table here\n"
