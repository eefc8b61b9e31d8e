"""Published ISBI 2015 results as data (``data/literature.yaml``) and the comparison table
that puts this project's rows beside them (report, scripts/literature_table.py; the README's
headline rows come from scripts/protocol_study.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SDR_MM = (2.0, 2.5, 3.0, 4.0)
LITERATURE_PATH = Path(__file__).parents[1] / "data" / "literature.yaml"
FIELDS = ("name", "citation", "input", "hardware", "test1", "source", "verified")


def load_literature() -> dict[str, Any]:
    """The published results, checked: every method has its fields, an MRE and four SDRs."""
    data = yaml.safe_load(LITERATURE_PATH.read_text())
    for i, m in enumerate(data["methods"]):
        missing = [f for f in FIELDS if f not in m]
        if missing:
            raise ValueError(f"literature.yaml methods[{i}] lacks {missing}")
        for split in ("test1", "test2"):
            if split in m and (len(m[split]["sdr"]) != len(SDR_MM) or not m[split]["mre_mm"] > 0):
                raise ValueError(f"literature.yaml methods[{i}].{split}: MRE and 4 SDRs expected")
    return data


def comparison_rows(ours: list[dict[str, Any]]) -> list[list[str]]:
    """Table rows: published methods (Test1, Test2) then ``ours`` (``name``, ``input``,
    ``hardware``, ``test1`` like the YAML's, optional ``note``)."""
    rows = []
    for m in [*load_literature()["methods"], *ours]:
        cells = [m["name"], m["input"], m["hardware"]]
        for split in ("test1", "test2"):
            r = m.get(split)
            cells += (
                ["-", "-"] if r is None else [f"{r['mre_mm']:.2f}", " / ".join(f"{v:.2f}" for v in r["sdr"])]
            )
        cells.append(m.get("note") or m.get("source", ""))
        rows.append(cells)
    return rows


HEADER = [
    "method",
    "input",
    "hardware",
    "Test1 MRE (mm)",
    "Test1 SDR 2 / 2.5 / 3 / 4 mm (%)",
    "Test2 MRE (mm)",
    "Test2 SDR (%)",
    "source / note",
]
