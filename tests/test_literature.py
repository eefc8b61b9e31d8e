"""The published-results table is data: complete entries, each with the ground truth it was
scored against, and the rows it makes."""

import pytest
import yaml

from mahtnet.analysis import literature
from mahtnet.analysis.literature import HEADER, comparison_rows, load_literature
from mahtnet.analysis.report import literature_section


def test_every_published_entry_is_complete_sourced_and_names_its_ground_truth():
    methods = load_literature()["methods"]
    assert len(methods) >= 6
    assert all(m["citation"] and m["source"] and isinstance(m["verified"], bool) for m in methods)
    assert all(0 < m["test1"]["mre_mm"] < 3 and len(m["test1"]["sdr"]) == 4 for m in methods)
    assert all(m["ground_truth_evidence"] for m in methods)
    challenge = [m for m in methods if "challenge" in m["name"]]
    assert len(challenge) == 2
    assert all(m["ground_truth"] == m["compare_with"] == "official" for m in challenge)
    lindner = next(m for m in challenge if m["name"].startswith("Lindner"))
    assert "Sci. Rep." not in lindner["citation"] and lindner["test1"]["mre_mm"] == 1.67
    deep = [m for m in methods if m not in challenge]
    assert all(m["compare_with"] == "mean" for m in deep)


def test_a_row_scored_on_one_ground_truth_cannot_stand_beside_the_other(tmp_path, monkeypatch):
    data = yaml.safe_load(literature.LITERATURE_PATH.read_text())
    data["methods"][0] |= {"ground_truth": "official", "compare_with": "mean"}
    bad = tmp_path / "literature.yaml"
    bad.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(literature, "LITERATURE_PATH", bad)
    with pytest.raises(ValueError, match=r"methods\[0\]: scored against official but compared with mean"):
        load_literature()
    data["methods"][0] |= {"ground_truth": "senior"}
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"methods\[0\]: ground_truth in"):
        load_literature()


def test_our_rows_sit_below_the_published_ones():
    ours = [
        {
            "name": "ours",
            "input": "320x256",
            "hardware": "CPU",
            "ground_truth": "mean",
            "test1": {"mre_mm": 1.6, "sdr": [75, 81, 85, 90]},
        }
    ]
    rows = comparison_rows(ours)
    assert len(rows[0]) == len(HEADER) and rows[-1][:5] == ["ours", "320x256", "CPU", "mean", "1.60"]
    assert rows[-1][6] == "-"  # no Test2 for us
    ibragimov = next(r for r in rows if r[0].startswith("Ibragimov"))
    assert ibragimov[3] == "official" and ibragimov[6] == "-"  # Test2 MRE not printed
    assert next(r for r in rows if "FARNet" in r[0])[3] == "unknown (mean inferred)"


def test_the_report_section_only_for_the_same_protocol():
    """The published rows stand beside this run's models once per ground truth, on ISBI Test1
    (and Test2 where evaluated)."""
    block = {"mre_mm": 1.6, "sdr_2mm": 75.0, "sdr_2.5mm": 81.0, "sdr_3mm": 85.0, "sdr_4mm": 90.0}
    sets = {
        "maht_net": {
            "test1": {"official": block, "mean": block | {"mre_mm": 1.2}},
            "test2": {"official": block | {"mre_mm": 1.5}, "mean": block | {"mre_mm": 1.4}},
        }
    }
    context = {
        "dataset": "isbi2015",
        "gt": "mean",
        "test_split": "Test1Data",
        "input": "320x256",
        "seed": 42,
        "sets": sets,
    }
    section = literature_section({"maht_net": {}}, context)
    assert "## Published results (same protocol)" in section
    official, mean = (line for line in section[4].splitlines() if "this run: maht_net" in line)
    assert "| official | 1.60 |" in official and "| 1.50 |" in official
    assert "trained on mean labels" in official
    assert "| mean | 1.20 |" in mean and "| 1.40 |" in mean
    assert literature_section({}, context | {"dataset": "synthetic"}) == []
    assert literature_section({}, context | {"test_split": "Test2Data"}) == []
