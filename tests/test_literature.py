"""The published-results table is data: complete entries, and the rows it makes."""

from mahtnet.analysis.literature import HEADER, comparison_rows, load_literature
from mahtnet.analysis.report import literature_section


def test_every_published_entry_is_complete_and_sourced():
    methods = load_literature()["methods"]
    assert len(methods) >= 5
    assert all(m["citation"] and m["source"] and isinstance(m["verified"], bool) for m in methods)
    assert all(0 < m["test1"]["mre_mm"] < 3 and len(m["test1"]["sdr"]) == 4 for m in methods)


def test_our_rows_sit_below_the_published_ones():
    ours = [
        {
            "name": "ours",
            "input": "320x256",
            "hardware": "CPU",
            "test1": {"mre_mm": 1.6, "sdr": [75, 81, 85, 90]},
        }
    ]
    rows = comparison_rows(ours)
    assert len(rows[0]) == len(HEADER) and rows[-1][:4] == ["ours", "320x256", "CPU", "1.60"]
    assert rows[-1][5] == "-"  # no Test2 for us


def test_the_report_section_only_for_the_same_protocol():
    """Every model is scored against the official ground truth, so the published rows stand
    beside any training labels, on ISBI Test1 (and Test2 where evaluated)."""
    block = {"mre_mm": 1.6, "sdr_2mm": 75.0, "sdr_2.5mm": 81.0, "sdr_3mm": 85.0, "sdr_4mm": 90.0}
    sets = {"maht_net": {"test1": {"official": block}, "test2": {"official": block | {"mre_mm": 1.5}}}}
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
    ours = next(line for line in section if "this run: maht_net" in line)
    assert "| 1.60 |" in ours and "| 1.50 |" in ours and "trained on mean labels" in ours
    assert literature_section({}, context | {"dataset": "synthetic"}) == []
    assert literature_section({}, context | {"test_split": "Test2Data"}) == []
