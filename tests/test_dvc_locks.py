"""Every committed ``dvc.lock`` matches the code it was reproduced from: each stage of the
pipeline is in its lock with the same command and the same deps, every dependency that git
tracks (code, params) has the hash the lock recorded, and every recorded parameter has the
value ``params.yaml`` gives it. A change to the code or the params without ``dvc repro`` (or a
lock edited by hand) fails here, without the DVC cache a fresh clone lacks (data deps, which are
pipeline outputs or the dataset, are DVC's own business and skipped)."""

import hashlib
import subprocess

import pytest
import yaml
from conftest import REPO

PIPELINES = ["dvc.yaml", "crossval/dvc.yaml", "search/dvc.yaml"]


def _tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return set(out.splitlines())


def _stage_names(pipeline: dict, params: dict) -> set[str]:
    names = set()
    for name, stage in pipeline["stages"].items():
        if "foreach" in stage:
            items = stage["foreach"]
            if isinstance(items, str) and items.startswith("${"):  # a list in params.yaml
                items = _get(params, items[2:-1])
            keys = items if isinstance(items, list) else list(items)
            names |= {f"{name}@{k}" for k in keys}
        else:
            names.add(name)
    return names


def _get(params: dict, dotted: str):
    for part in dotted.split("."):
        params = params[part]
    return params


@pytest.mark.parametrize("dvc_yaml", PIPELINES)
def test_lock_matches_the_code_and_params(dvc_yaml):
    path = REPO / dvc_yaml
    lock_path = path.with_name("dvc.lock")
    assert lock_path.is_file(), f"{dvc_yaml}: no dvc.lock; run dvc repro {dvc_yaml}"
    pipeline, lock = yaml.safe_load(path.read_text()), yaml.safe_load(lock_path.read_text())
    wdir = path.parent / pipeline["stages"][next(iter(pipeline["stages"]))].get("wdir", ".")
    tracked, params = _tracked(), yaml.safe_load((REPO / "params.yaml").read_text())
    missing = sorted(_stage_names(pipeline, params) - set(lock["stages"]))
    assert not missing, f"{dvc_yaml}: stages never reproduced: {missing}"
    stale = []
    for name, stage in pipeline["stages"].items():  # the deps declared are the deps recorded
        declared = stage.get("deps", [])
        if "foreach" in stage or any("${" in d for d in declared):
            continue
        recorded = {d["path"] for d in lock["stages"][name].get("deps", [])}
        if set(declared) != recorded:
            stale.append(f"{name}: deps {sorted(set(declared) ^ recorded)[:3]} differ from the lock")
    for name, stage in lock["stages"].items():
        for dep in stage.get("deps", []):
            full = (wdir / dep["path"]).resolve()
            rel = full.relative_to(REPO.resolve()).as_posix() if full.is_relative_to(REPO.resolve()) else None
            if rel not in tracked:
                continue  # data: a pipeline output or the dataset
            md5 = hashlib.md5((REPO / rel).read_bytes()).hexdigest()
            if md5 != dep.get("md5"):
                stale.append(f"{name}: {rel} changed")
        for values in stage.get("params", {}).values():
            for key, value in values.items():
                if _get(params, key) != value:
                    stale.append(f"{name}: params {key} changed")
    assert not stale, f"{lock_path.relative_to(REPO)} is stale (dvc repro {dvc_yaml}): " + "; ".join(
        stale[:8]
    )


def test_each_stage_read_what_its_upstream_stage_last_wrote():
    """A dependency that is another stage's output carries the hash that stage's output has in
    the lock (every lock of the repository read together: crossval/ and search/ read the root
    pipeline's outputs). Catches an upstream stage re-run alone (e.g. ``dvc repro -f`` of one
    target re-runs its upstream) whose new output the downstream stages never read."""
    locks = {p: yaml.safe_load((REPO / p).with_name("dvc.lock").read_text()) for p in PIPELINES}
    wrote = {}
    for pipeline, lock in locks.items():
        for name, stage in lock["stages"].items():
            for out in stage.get("outs", []):
                wrote[out["path"]] = (f"{pipeline}:{name}", out.get("md5"))
    stale = []
    for pipeline, lock in locks.items():
        for name, stage in lock["stages"].items():
            for dep in stage.get("deps", []):
                if dep["path"] in wrote and wrote[dep["path"]][1] != dep.get("md5"):
                    stale.append(
                        f"{pipeline}:{name} read {dep['path']} before {wrote[dep['path']][0]} re-wrote it"
                    )
    assert not stale, "stale downstream stages (dvc repro): " + "; ".join(stale[:6])
