"""Run snapshots: what the studies keep of one finished run (a DVC experiment, a commit or the
workspace), so that they grow over sessions without the DVC cache of old runs.

A record holds the run's params, each evaluated set's scores (validation, Test1, Test2; official
ground truth and the mean of both doctors; every decoding variant) and the per-image MREs the
paired tests need. The training-protocol study (:mod:`mahtnet.studies.protocol`) and the
ablation study (:mod:`mahtnet.studies.ablation`) both read them, and compare two sets of runs
with :func:`paired_over_seeds`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from mahtnet.analysis.stats import signed_rank_test

SETS = ("val", "test1", "test2")
GTS = ("official", "mean")
PARAM_KEYS = ("seed", "data.gt", "data.dataset", "preprocess.height", "preprocess.width", "model.encoder")


def get_dotted(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


def reader(rev: str, repo: Path) -> Callable[[str], str]:
    """``read(path) -> str`` of the workspace or of a git / DVC revision (an experiment)."""
    if rev == "workspace":
        return lambda path: (repo / path).read_text()
    import dvc.api

    return lambda path: dvc.api.read(path, repo=str(repo), rev=rev)


def record(rev: str, model: str, repo: Path) -> dict:
    """One run's record of ``model`` (``maht_net`` or ``baseline``) at ``rev``."""
    read = reader(rev, repo)
    params = yaml.safe_load(read("params.yaml"))
    metrics = json.loads(read(f"metrics/{model}.json"))
    sets = [s for s in SETS if s in metrics]
    if not sets:
        raise ValueError(f"{rev}: metrics/{model}.json has no per-set scores (val / test1 / test2)")
    out = {
        "rev": rev,
        "model": model,
        "protocol": get_dotted(params, "data.gt"),
        "seed": int(params["seed"]),
        "params": {k: get_dotted(params, k) for k in PARAM_KEYS},
        "scores": {s: {v: metrics[s][v] for v in ("variants", "variants_mean")} for s in sets},
        "per_image": {},
    }
    for s in sets:
        for variant in metrics[s]["variants"]:
            for gt in GTS:
                text = read(f"data/eval/{model}_sets/{s}_{variant}_errors_{gt}.csv")
                df = pd.read_csv(io.StringIO(text), dtype={"image_id": str})
                out["per_image"].setdefault(s, {"image_id": df["image_id"].tolist()})
                out["per_image"][s][f"{variant}.{gt}"] = [round(float(v), 4) for v in df["mre_mm"]]
    return out


def scores(run: dict, s: str, gt: str, variant: str) -> dict:
    """A record's figures (MRE, SDRs, largest error, ...) on set ``s`` of decoding ``variant``
    against ground truth ``gt`` (``official`` or ``mean``)."""
    return run["scores"][s]["variants" if gt == "official" else "variants_mean"][variant]


def errors(run: dict, s: str, key: str) -> tuple[list[str], np.ndarray]:
    """A record's image ids and per-image MREs on set ``s`` under ``key`` (``variant.gt``)."""
    per = run["per_image"][s]
    return per["image_id"], np.asarray(per[key], dtype=np.float64)


def paired_over_seeds(
    a: dict[int, tuple[list[str], np.ndarray]], b: dict[int, tuple[list[str], np.ndarray]]
) -> dict | None:
    """B - A on per-image MRE over training seeds: ``a`` and ``b`` map a seed to its run's
    ``(image_ids, per-image MRE)``. Per common seed the mean difference and its Wilcoxon p;
    pooled, the Wilcoxon p of the per-image differences averaged over the seeds (``diffs``:
    ``(S, N)``, not for JSON). None without a common seed; runs of one seed that scored
    different images raise ValueError."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    for k in seeds:
        if list(a[k][0]) != list(b[k][0]):
            raise ValueError(f"seed {k}: the two runs scored different images")
    diffs = np.array(
        [np.asarray(b[k][1], dtype=np.float64) - np.asarray(a[k][1], dtype=np.float64) for k in seeds]
    )
    per_seed = {str(k): {"mre_diff": float(d.mean()), "p": float(signed_rank_test(d)["p_value"])}
                for k, d in zip(seeds, diffs, strict=True)}  # fmt: skip
    pooled_p = float(signed_rank_test(diffs.mean(axis=0))["p_value"])
    return {"seeds": seeds, "per_seed": per_seed, "pooled_p": pooled_p, "diffs": diffs}
