"""Paired comparison of two recipes of the same pipeline (e.g. an old and a new refiner) run on
the same coarse models: per run (seed) and model, recipe B against recipe A on the per-image
errors of the evaluated test images (``data/eval/<model>_per_image.csv``, the final variant);
and over all runs, the Wilcoxon test on the per-image MRE averaged over the runs::

    python scripts/compare_recipes.py --pair seed42=../isbi2:../r42 --pair seed43=../seed43:../r43 \\
        --out docs/isbi2015-senior/refiner_recipe.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import stats as sstats

from mahtnet.analysis.evaluation import read_per_image
from mahtnet.analysis.stats import compare_paired, mean_sd
from mahtnet.io import write_json

ROOT = Path(__file__).resolve().parents[1]

KEEP = ("images", "mre_a", "mre_b", "mre_diff", "sdr_a", "sdr_b", "wilcoxon", "bootstrap")


def errors(run: Path, model: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Image ids (sorted), per-image errors ``(N, K)`` mm in that order, landmark names."""
    ids, err, names = read_per_image(run / "data" / "eval" / f"{model}_per_image.csv")
    order = np.argsort(ids)
    return ids[order], err[order], names


def compare_pair(a: Path, b: Path, model: str) -> tuple[dict, np.ndarray, np.ndarray]:
    ids_a, err_a, names = errors(a, model)
    ids_b, err_b, _ = errors(b, model)
    if list(ids_a) != list(ids_b):
        raise ValueError(f"{a} and {b} evaluated different images for {model}")
    result = compare_paired(err_a, err_b, landmark_names=names, n_boot=10000)
    kept = {k: result[k] for k in KEEP}
    kept["max_a"], kept["max_b"] = float(err_a.max()), float(err_b.max())
    kept["per_landmark_mre_diff"] = {r["landmark"]: r["mre_diff"] for r in result["per_landmark"]}
    return kept, err_a.mean(axis=1), err_b.mean(axis=1)


def summarize(pairs: dict[str, tuple[Path, Path]], models: list[str]) -> dict:
    out: dict = {"recipe_a": {}, "recipe_b": {}, "per_run": {}, "over_runs": {}}
    for name, (a, b) in pairs.items():
        out["recipe_a"][name], out["recipe_b"][name] = str(a), str(b)
    for model in models:
        img_a, img_b = [], []
        for name, (a, b) in pairs.items():
            result, ia, ib = compare_pair(a, b, model)
            out["per_run"].setdefault(model, {})[name] = result
            img_a.append(ia)
            img_b.append(ib)
        mean_a, mean_b = np.mean(img_a, axis=0), np.mean(img_b, axis=0)
        diffs = [out["per_run"][model][n]["mre_diff"] for n in pairs]
        out["over_runs"][model] = {
            "mre_a_mm": float(np.mean([x.mean() for x in img_a])),
            "mre_b_mm": float(np.mean([x.mean() for x in img_b])),
            "mre_diff_mm": mean_sd(diffs),
            "wilcoxon_p_run_averaged_image_mre": float(sstats.wilcoxon(mean_b - mean_a).pvalue),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", action="append", required=True, help="NAME=DIR_A:DIR_B")
    parser.add_argument("--models", nargs="+", default=["baseline", "maht_net"])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    pairs = {}
    for item in args.pair:
        name, sep, dirs = item.partition("=")
        a, sep2, b = dirs.partition(":")
        if not (sep and sep2 and name and a and b):
            raise SystemExit(f"--pair must be NAME=DIR_A:DIR_B, got {item!r}")
        pairs[name] = (Path(a), Path(b))
    result = summarize(pairs, args.models)
    write_json(args.out, result)
    for model, r in result["over_runs"].items():
        print(
            f"{model}: A {r['mre_a_mm']:.3f} B {r['mre_b_mm']:.3f} mm, B - A {r['mre_diff_mm']['mean']:+.3f} "
            f"+- {r['mre_diff_mm']['sd']:.3f} over {len(pairs)} runs, p (run-averaged) "
            f"{r['wilcoxon_p_run_averaged_image_mre']:.3g}"
        )


if __name__ == "__main__":
    main()
