"""Stage: paired statistical comparison of evaluated models on the same test images.

Reads each model's per-image, per-landmark errors (``data/eval/<name>_per_image.csv`` from
the evaluate stage) and compares every model with the reference (the U-Net baseline):
Wilcoxon signed-rank test on per-image MRE, per-landmark tests with Holm correction,
bootstrap 95 % CIs of the MRE and SDR differences, effect sizes -> ``metrics/compare.json``
and plots.
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from mahtnet import metrics
from mahtnet.analysis.evaluation import SDR_CURVE_MM, read_per_image, write_csv
from mahtnet.analysis.plots import plot_paired_mre, plot_per_landmark_bars, plot_sdr_curves
from mahtnet.analysis.stats import compare_many, holm_across
from mahtnet.config import load_params, to_dict
from mahtnet.errors import run_cli
from mahtnet.io import write_json
from mahtnet.tracking import start_run


def compare_pairs(errors: dict, pairs: list[str], params, names) -> dict[str, dict]:
    """Each ``B:A`` pair compared as the models are with the reference (B - A), keyed ``B_vs_A``;
    the image-level p-values Holm-corrected across the pairs."""
    out = {}
    for pair in pairs:
        b, _, a = pair.partition(":")
        for name in (a, b):
            if name not in errors:
                raise ValueError(f"--pairs {pair!r}: {name!r} is not among --models {sorted(errors)}")
        cp = params.compare
        res = compare_many(
            {a: errors[a], b: errors[b]},
            a,
            holm=False,
            thresholds_mm=params.evaluate.sdr_thresholds_mm,
            n_boot=cp.bootstrap_samples,
            seed=params.seed,
            alpha=cp.alpha,
            landmark_names=names,
        )[b]
        split_per_landmark(res)
        out[f"{b}_vs_{a}"] = res
    holm_across(out.values(), params.compare.alpha, "pairs")
    return out


def split_per_landmark(res: dict) -> pd.DataFrame:
    """Take a comparison's per-landmark tests out of it (a table of their own) and keep the
    names of the landmarks that differ significantly after Holm correction."""
    per_landmark = pd.DataFrame(res.pop("per_landmark"))
    res["significant_landmarks"] = per_landmark.loc[per_landmark["reject"], "landmark"].tolist()
    return per_landmark


def read_errors(eval_dir: Path, models: list[str]) -> tuple[dict[str, np.ndarray], list, list[str]]:
    """Each model's per-image, per-landmark errors; the same images and landmarks for all."""
    errors, ids, names = {}, None, None
    for model in models:
        path = eval_dir / f"{model}_per_image.csv"
        image_ids, errors[model], landmark_names = read_per_image(path)
        if ids is not None and (list(image_ids) != list(ids) or landmark_names != names):
            raise ValueError(f"{path} has other images or landmarks than {models[0]}'s: not paired")
        ids, names = image_ids, landmark_names
    return errors, ids, names


def write_model_outputs(results: dict, errors: dict, reference: str, plots: Path) -> dict[str, dict]:
    """Per compared model: its per-landmark table (CSV) and paired-MRE plot; the results
    without their per-landmark tests."""
    summary = {}
    for model, res in results.items():
        per_landmark = split_per_landmark(res)
        summary[model] = res
        write_csv(plots / f"per_landmark_{model}.csv", per_landmark, float_format="%.6g")
        plot_paired_mre(
            errors[reference].mean(axis=1),
            errors[model].mean(axis=1),
            reference,
            model,
            plots / f"paired_mre_{model}.png",
        )
    return summary


def plot_all_models(errors: dict, names: list[str], plots: Path) -> None:
    curves = {
        m: (np.array(SDR_CURVE_MM), [metrics.sdr(e, t) for t in SDR_CURVE_MM]) for m, e in errors.items()
    }
    plot_sdr_curves(curves, plots / "sdr_curves.png")
    plot_per_landmark_bars(
        names, {m: e.mean(axis=0) for m, e in errors.items()}, plots / "per_landmark_mre.png"
    )


def log_run(run, results: dict, out: Path, plots: Path) -> None:
    for model, res in results.items():
        run.log_metrics(
            {
                f"{model}.mre_diff": res["mre_diff"],
                f"{model}.wilcoxon_p": res["wilcoxon"]["p_value"],
                f"{model}.rank_biserial": res["effect_size"]["rank_biserial"] or 0.0,
            }
        )
    run.log_artifact(out)
    for path in sorted(plots.iterdir()):
        run.log_artifact(path, "plots")


def print_summary(comparisons: list[dict], images: int) -> None:
    for res in comparisons:
        ci = (res["bootstrap"] or {}).get("mre_diff") or [float("nan")] * 2
        print(
            f"{res['variant']} vs {res['reference']} on {images} images: "
            f"MRE {res['mre_b']:.3f} vs {res['mre_a']:.3f} mm "
            f"(diff {res['mre_diff']:+.3f}, 95% CI {ci[0]:+.3f}..{ci[1]:+.3f}), Wilcoxon p = "
            f"{res['wilcoxon']['p_value']:.3g}, rank-biserial {res['effect_size']['rank_biserial']}, "
            f"significant landmarks (Holm): {res['significant_landmarks']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", required=True, nargs="+", help="names: data/eval/<name>_per_image.csv")
    parser.add_argument("--reference", required=True, help="the model the others are compared with")
    parser.add_argument(
        "--pairs",
        nargs="*",
        default=[],
        help="further B:A pairs (e.g. maht_net:maht_net_coarse), Holm-corrected",
    )
    parser.add_argument("--eval-dir", type=Path, default=Path("data/eval"))
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--plots", required=True, type=Path)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    if args.reference not in args.models:
        raise ValueError(f"--reference {args.reference!r} is not among --models {args.models}")
    errors, ids, names = read_errors(args.eval_dir, args.models)
    cp = params.compare
    with start_run(params.tracking, "compare", {"compare": to_dict(cp), "models": args.models}) as run:
        results = compare_many(
            errors,
            args.reference,
            thresholds_mm=params.evaluate.sdr_thresholds_mm,
            n_boot=cp.bootstrap_samples,
            seed=params.seed,
            alpha=cp.alpha,
            landmark_names=names,
        )
        summary = {"reference": args.reference, "images": len(ids)}
        summary.update(write_model_outputs(results, errors, args.reference, args.plots))
        summary["pairs"] = compare_pairs(errors, args.pairs, params, names)
        write_json(args.out, summary)
        plot_all_models(errors, names, args.plots)
        log_run(run, results, args.out, args.plots)
    print_summary([*results.values(), *summary["pairs"].values()], len(ids))


if __name__ == "__main__":
    run_cli(main)
