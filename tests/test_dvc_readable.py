"""`dvc metrics show` / `dvc metrics diff` stay short: only the headline files are declared as
metrics (per model and set: MRE, SDR, gross errors), every other JSON of the pipelines is an
output kept in git (`cache: false`), one `dvc metrics show <file>` away.

Reads the dvc.yaml files and the committed metrics files (no DVC, well under a second)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ("dvc.yaml", "crossval/dvc.yaml", "search/dvc.yaml")
MAX_VALUES = 40  # what `dvc metrics show` / `dvc metrics diff --all` print, one line each


def _lookup(params: dict, dotted: str):
    for part in dotted.split("."):
        params = params[part]
    return params


def _instances(stage: dict, params: dict) -> list[dict[str, str]]:
    """The ${key} / ${item} values a stage's `foreach` expands to (one empty dict without)."""
    each = stage.get("foreach")
    if each is None:
        return [{}]
    if isinstance(each, str):
        each = _lookup(params, re.fullmatch(r"\$\{(.+)\}", each).group(1))
    if isinstance(each, dict):
        return [{"key": str(k), "item": str(v)} for k, v in each.items()]
    return [{"item": str(v)} for v in each]


def _paths(entries) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def declared_metrics() -> list[Path]:
    """Every metrics file the three pipelines declare (stage `metrics:` and top-level `metrics:`)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    found = []
    for name in PIPELINES:
        dvcfile = ROOT / name
        spec = yaml.safe_load(dvcfile.read_text())
        found += [dvcfile.parent / p for p in _paths(spec.get("metrics"))]
        for stage in spec.get("stages", {}).values():
            body = stage.get("do", stage)
            wdir = dvcfile.parent / body.get("wdir", ".")
            for values in _instances(stage, params):
                for p in _paths(body.get("metrics")):
                    for k, v in values.items():
                        p = p.replace("${" + k + "}", v)
                    found.append((wdir / p).resolve())
    return found


def values(node) -> list[str]:
    """The leaf names DVC prints, one per line of `dvc metrics diff` (a list is one value)."""
    if isinstance(node, dict):
        return [f"{k}.{leaf}" if leaf else str(k) for k, v in node.items() for leaf in values(v)]
    return [""]


def test_metrics_show_is_short():
    files = declared_metrics()
    assert files, "no metrics declared"
    counts = {f.relative_to(ROOT).as_posix(): len(values(json.loads(f.read_text()))) for f in files}
    assert sum(counts.values()) <= MAX_VALUES, (
        f"dvc metrics show prints {sum(counts.values())} values ({counts}); declare the detail "
        "as `outs:` with `cache: false` and keep `metrics:` for the headline figures"
    )


def test_declared_metrics_are_the_headline():
    for f in declared_metrics():
        leaves = values(json.loads(f.read_text()))
        for figure in ("mre_mm", "sdr_2mm", "n_over_15mm"):
            assert any(leaf.endswith(figure) for leaf in leaves), f"{f.name} lacks {figure}"


def test_detail_stays_an_output():
    """The JSONs under metrics/ that are not declared as metrics are outputs kept in git
    (`cache: false`): `dvc metrics show metrics/<name>.json` reads them at any commit."""
    for name in PIPELINES:
        spec = yaml.safe_load((ROOT / name).read_text())
        for stage_name, stage in spec["stages"].items():
            for entry in stage.get("do", stage).get("outs") or []:
                path = entry if isinstance(entry, str) else next(iter(entry))
                if path.startswith("metrics/"):
                    cached = isinstance(entry, str) or entry[path].get("cache", True)
                    assert not cached, f"{name} {stage_name}: {path} goes to the DVC cache, not git"
