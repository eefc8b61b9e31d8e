"""Published ISBI 2015 results as data (``data/literature.yaml``) and the comparison table
that puts this project's rows beside them (report, scripts/literature_table.py; the README's
headline rows come from :mod:`mahtnet.studies.protocol`).

Every published row says which ground truth it was scored against (``ground_truth``:
``official``, ``mean`` or ``unknown``), which of our columns it is set beside
(``compare_with``: ``official`` or ``mean``) and why (``ground_truth_evidence``): the same
predictions differ by about 0.5 mm on Test1 between the two conventions (the dataset README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SDR_MM = (2.0, 2.5, 3.0, 4.0)
LITERATURE_PATH = Path(__file__).parents[1] / "data" / "literature.yaml"
FIELDS = (
    "name", "citation", "input", "hardware", "test1", "source", "verified",
    "ground_truth", "compare_with", "ground_truth_evidence",
)  # fmt: skip
GROUND_TRUTHS = ("official", "mean", "unknown")
COLUMNS = ("official", "mean")


def load_literature() -> dict[str, Any]:
    """The published results, checked: every method has its fields, a known ground truth, a
    column to stand beside, an MRE (or null where the table prints none) and four SDRs."""
    data = yaml.safe_load(LITERATURE_PATH.read_text())
    for i, m in enumerate(data["methods"]):
        where = f"literature.yaml methods[{i}]"
        missing = [f for f in FIELDS if f not in m]
        if missing:
            raise ValueError(f"{where} lacks {missing}")
        if m["ground_truth"] not in GROUND_TRUTHS or m["compare_with"] not in COLUMNS:
            raise ValueError(f"{where}: ground_truth in {GROUND_TRUTHS}, compare_with in {COLUMNS} expected")
        if m["ground_truth"] != "unknown" and m["ground_truth"] != m["compare_with"]:
            gt, col = m["ground_truth"], m["compare_with"]
            raise ValueError(f"{where}: scored against {gt} but compared with {col}")
        for split in ("test1", "test2"):
            r = m.get(split)
            if r is not None and (
                len(r["sdr"]) != len(SDR_MM) or not (r["mre_mm"] is None or r["mre_mm"] > 0)
            ):
                raise ValueError(f"{where}.{split}: MRE (or null) and 4 SDRs expected")
    return data


def ground_truth_label(m: dict[str, Any]) -> str:
    """``official``, ``mean``, or ``unknown (mean inferred)``: what a table prints."""
    gt = m["ground_truth"]
    return f"unknown ({m['compare_with']} inferred)" if gt == "unknown" else gt


def _mre(r: dict | None) -> str:
    return "-" if r is None or r["mre_mm"] is None else f"{r['mre_mm']:.2f}"


def comparison_rows(ours: list[dict[str, Any]]) -> list[list[str]]:
    """Table rows: published methods (Test1, Test2) then ``ours`` (``name``, ``input``,
    ``hardware``, ``ground_truth``, ``test1`` like the YAML's, optional ``note``)."""
    rows = []
    for m in [*load_literature()["methods"], *ours]:
        gt = ground_truth_label(m) if "compare_with" in m else m["ground_truth"]
        cells = [m["name"], m["input"], m["hardware"], gt]
        for split in ("test1", "test2"):
            r = m.get(split)
            cells += ["-", "-"] if r is None else [_mre(r), " / ".join(f"{v:.2f}" for v in r["sdr"])]
        cells.append(m.get("note") or m.get("source", ""))
        rows.append(cells)
    return rows


HEADER = [
    "method",
    "input",
    "hardware",
    "ground truth",
    "Test1 MRE (mm)",
    "Test1 SDR 2 / 2.5 / 3 / 4 mm (%)",
    "Test2 MRE (mm)",
    "Test2 SDR (%)",
    "source / note",
]
