"""Stage (crossval/dvc.yaml, outside the default pipeline): k-fold cross-validation of the
models of ``params.crossval`` over the training images; mean and spread of MRE / SDR.

    dvc repro crossval/dvc.yaml
"""

import argparse
from pathlib import Path

from mahtnet.config import flatten, load_params, to_dict
from mahtnet.data.preprocess import PreparedSet
from mahtnet.errors import run_cli
from mahtnet.io import write_json
from mahtnet.tracking import start_run
from mahtnet.training.crossval import concat, crossvalidate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--prepared", required=True, type=Path, help="train.npz + val.npz: the training images"
    )
    parser.add_argument("--work", required=True, type=Path, help="per-fold checkpoints and resume states")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    params = load_params()
    training = concat([PreparedSet.load(args.prepared / f"{s}.npz") for s in ("train", "val")])
    with start_run(params.tracking, "crossval", to_dict(params)) as run:
        result = crossvalidate(params, training, args.work)
        summary = {
            m: {k: v for k, v in r["summary"].items() if k != "images"} for m, r in result["models"].items()
        }
        write_json(
            args.out,
            {
                "folds": result["folds"],
                "images": result["images"],
                **summary,
                "per_fold": {m: r["per_fold"] for m, r in result["models"].items()},
            },
        )
        run.log_metrics(flatten(summary))
        run.log_artifact(args.out)
    for model, s in summary.items():
        print(
            f"{model}: {result['folds']}-fold MRE {s['mre_mm']['mean']:.3f} +/- {s['mre_mm']['sd']:.3f} mm "
            f"(range {s['mre_mm']['min']:.3f}-{s['mre_mm']['max']:.3f}), SDR2 {s['sdr_2mm']['mean']:.1f} "
            f"+/- {s['sdr_2mm']['sd']:.1f} %"
        )


if __name__ == "__main__":
    run_cli(main)
