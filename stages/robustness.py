"""Stage: each model re-evaluated on the test images under perturbations of the original image
(noise, gamma, contrast, blur, JPEG, rotation, scaling, border crop; severities in
``robustness``), with paired tests against the clean images::

    python stages/robustness.py --model baseline=data/models/baseline.pt \\
        --model maht_net=data/models/stage3.pt --out metrics/robustness.json \\
        --plot plots/robustness/mre_vs_severity.png --csv plots/robustness/robustness.csv
"""

import argparse
from pathlib import Path

import pandas as pd

from mahtnet.analysis.evaluation import evaluate, write_csv
from mahtnet.analysis.plots import plot_robustness
from mahtnet.analysis.robustness import robustness
from mahtnet.analysis.stats import compare_paired
from mahtnet.config import load_params
from mahtnet.data.isbi import list_split
from mahtnet.data.preprocess import read_image
from mahtnet.deploy.export import named_path
from mahtnet.errors import run_cli
from mahtnet.io import write_json
from mahtnet.tracking import start_run


def table(results: dict) -> pd.DataFrame:
    """One row per model, perturbation and severity (a DVC plot)."""
    return pd.DataFrame(
        [
            {"model": m, "perturbation": name, "level": i + 1, **row}
            for m, r in results.items()
            for name, p in r["perturbations"].items()
            for i, row in enumerate(p["rows"])
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, type=named_path, action="append", help="NAME=CHECKPOINT")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--plot", required=True, type=Path)
    parser.add_argument("--csv", required=True, type=Path)
    args = parser.parse_args()
    params = load_params()
    d, e = params.data, params.evaluate
    samples = list_split(d.root, d.test_split, d.gt, d.dataset)
    images = [read_image(s.image_path) for s in samples]
    size = (params.preprocess.height, params.preprocess.width)
    results = {}
    with start_run(params.tracking, "robustness", {"robustness": str(params.robustness)}) as run:
        for name, ckpt in args.model:
            score = lambda data, ckpt=ckpt: (
                evaluate(ckpt, data, e.sdr_thresholds_mm, params.train.device, e.batch_size).errors_mm
            )
            compare = lambda a, b: compare_paired(a, b, e.sdr_thresholds_mm, n_boot=200)
            results[name] = robustness(
                score, samples, images, params.robustness, size, compare, f"robustness {name}"
            )
            print(f"{name}: clean MRE {results[name]['clean']['mre_mm']:.3f} mm", flush=True)
        write_json(args.out, results)
        write_csv(args.csv, table(results))
        plot_robustness(results, args.plot)
        run.log_artifact(args.plot)
        run.log_metrics(
            {f"{r.model}_{r.perturbation}_{r.level}": r.mre_mm for r in table(results).itertuples()}
        )
    for name, r in results.items():
        worst = max(
            ((p, row) for p, v in r["perturbations"].items() for row in v["rows"]),
            key=lambda t: t[1]["mre_mm"],
        )
        print(f"{name}: worst {worst[0]} {worst[1]['severity']:g}: MRE {worst[1]['mre_mm']:.3f} mm")


if __name__ == "__main__":
    run_cli(main)
