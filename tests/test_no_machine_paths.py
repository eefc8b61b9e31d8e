"""Committed results record paths relative to the repository, never a machine's absolute path
(a clone elsewhere would read wrong or leaky paths)."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ABSOLUTE = re.compile(r"(?<![\w.])(/(?:work|home|root|tmp|Users|mnt)/[\w.-]+)")


def committed_results() -> list[Path]:
    files = [*ROOT.glob("metrics/*.json"), *ROOT.glob("docs/**/*.json"), *ROOT.glob("docs/**/report.md")]
    files.append(ROOT / "src" / "mahtnet" / "release" / "card.json")
    return [f for f in files if f.is_file()]


@pytest.mark.parametrize("path", committed_results(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_absolute_machine_paths(path):
    text = path.read_text()
    if path.suffix == ".json":
        json.loads(text)  # and still valid JSON
    assert not ABSOLUTE.findall(text), f"{path.relative_to(ROOT)}: {sorted(set(ABSOLUTE.findall(text)))[:3]}"
