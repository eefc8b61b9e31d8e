"""Rewrite the ``src/mahtnet`` deps of every stage in dvc.yaml (and crossval/, search/dvc.yaml) to
exactly the library modules its script imports, directly or transitively (what
tests/test_dvc_deps.py checks). Other deps are kept as they are.

    python scripts/sync_dvc_deps.py          # rewrite, and print what changed
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_dvc_deps import imported_modules  # noqa: E402


def sync(path: Path) -> None:
    stages = yaml.safe_load(path.read_text())["stages"]
    lines = path.read_text().splitlines(keepends=True)
    out, stage = [], None
    for line in lines:
        head = re.match(r"^  (\w+):\s*$", line)
        if head:
            stage = stages[head.group(1)]
            stage = stage.get("do", stage)
            need = sorted(imported_modules(ROOT / stage["cmd"].split()[1]))
            have = [d for d in stage["deps"] if re.match(r"src/mahtnet/.*\.py$", d)]
            if set(need) != set(have):
                print(
                    f"{path.name} {head.group(1)}: "
                    f"+{sorted(set(need) - set(have))} -{sorted(set(have) - set(need))}"
                )
        dep = re.match(r"^(\s+)- (\S+)\s*$", line)
        if dep and stage is not None and re.match(r"src/mahtnet/.*\.py$", dep.group(2)):
            continue  # dropped; the needed set is written after the script line
        out.append(line)
        if dep and stage is not None and dep.group(2) == stage["cmd"].split()[1]:
            out += [f"{dep.group(1)}- {m}\n" for m in need]
    path.write_text("".join(out))


if __name__ == "__main__":
    for f in (ROOT / "dvc.yaml", ROOT / "crossval" / "dvc.yaml", ROOT / "search" / "dvc.yaml"):
        sync(f)
